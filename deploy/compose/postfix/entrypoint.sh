#!/bin/sh
# Configure Postfix from the environment and run it in the foreground (PID 1 friendly).
set -eu

[ -f /etc/postfix/main.cf ] || cp /usr/share/postfix/main.cf.debian /etc/postfix/main.cf

postconf -e \
  "myhostname = ${POSTFIX_HOSTNAME:-mta.example.com}" \
  "mydestination =" \
  "mynetworks = ${POSTFIX_MYNETWORKS:-127.0.0.0/8}" \
  "relayhost = ${POSTFIX_RELAYHOST:-}" \
  "inet_interfaces = all" \
  "inet_protocols = ipv4" \
  "smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination" \
  "alias_maps =" \
  "alias_database =" \
  "message_size_limit = 27262976" \
  "smtp_tls_security_level = may" \
  "smtp_tls_CAfile = /etc/ssl/certs/ca-certificates.crt" \
  "maillog_file = /dev/stdout"

# No chroot: the Debian init script that would populate one is not used here.
postconf -F '*/*/chroot = n'

postfix check
exec postfix start-fg
