"""One transaction: facts (clamd, the helper process), the policy engine's decision, the copies, DKIM signing, the record."""
