"""Content rules: subjects, hateful and adult language, infringing links, personal data, malware."""

from __future__ import annotations

import io
import zipfile
from dataclasses import replace

import pytest

from factories import FOOTER_TEXT, ORDERS, SHOP, evaluate, facts, mail
from policies.facts import ShellFacts
from policies.findings import Action, Outcome
from policies.profiles import load_profile
from policies.rules.content import (
    adult,
    bsn_valid,
    hateful,
    iban_valid,
    infringing_links,
    luhn_valid,
    malware,
    mask_card,
    mask_iban,
    misleading_subject,
    offensive_subject,
    personal_data,
)

EICAR = "X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
UNSUB = "\nAfmelden: {{unsubscribe_url}}\n"


def body(text: str) -> bytes:
    return mail(text=f"Hallo,\n\n{text}\n\n{FOOTER_TEXT}{UNSUB}")


# --- content.offensive_subject ----------------------------------------------------------------


@pytest.mark.parametrize(("subject", "term"), [("Wat een KLOTE weer", "klote"), ("Fucking good deals", "fucking"),
                                                ("Tyfus-aanbieding!", "tyfus")])
def test_offensive_subject_hits_with_term_as_evidence(subject: str, term: str) -> None:
    # policy: clang E-aanstootgevende-onderwerpsregel
    hit = offensive_subject.check(facts(mail(subject=subject)))
    assert hit is not None and hit.evidence == term


def test_offensive_subject_clean_subject_passes() -> None:
    # policy: clang E-aanstootgevende-onderwerpsregel
    assert offensive_subject.check(facts(mail(subject="Nieuw: de zomercollectie"))) is None


def test_offensive_subject_near_miss_word_inside_another_word_or_only_in_body() -> None:
    # policy: clang E-aanstootgevende-onderwerpsregel — "Scunthorpe", "kuttekening" parts, and body text do not count
    assert offensive_subject.check(facts(mail(subject="Shitake paddenstoelen uit Scunthorpe"))) is None
    assert offensive_subject.check(facts(body("wat een klote weer"))) is None


def test_offensive_subject_site_extra_terms_from_params() -> None:
    # policy: clang E-aanstootgevende-onderwerpsregel — word lists extendable from the config
    params = {"wordlists": {"offensive": ["Prutswerk"]}}
    hit = offensive_subject.check(facts(mail(subject="Geen prútswerk meer"), params=params))
    assert hit is not None and hit.evidence == "Prutswerk"


# --- content.misleading_subject ---------------------------------------------------------------


@pytest.mark.parametrize("subject", ["RE: uw bestelling", "Fwd: aanbieding", "Antw: vraag", "Doorst: info",
                                     "[Shop] Re[2]: offerte", "FW: korting"])
def test_fake_reply_or_forward_without_thread_headers_hits(subject: str) -> None:
    # policy: clang E-misleiden ("met als doel mij te misleiden")
    hit = misleading_subject.check(facts(mail(subject=subject)))
    assert hit is not None and "reply or forward" in hit.detail


def test_reply_prefix_with_in_reply_to_or_references_passes() -> None:
    # policy: clang E-misleiden — near miss: a real reply
    assert misleading_subject.check(facts(mail(subject="Re: uw vraag", headers={"In-Reply-To": "<q@x.nl>"}))) is None
    assert misleading_subject.check(facts(mail(subject="Re: uw vraag", headers={"References": "<q@x.nl>"}))) is None


@pytest.mark.parametrize(("subject", "evidence"), [
    ("UW ACCOUNT WORDT GEBLOKKEERD", "UW ACCOUNT WORDT GEBLOKKEERD"),
    ("Alleen vandaag!!!", "!!!"),
    ("Laatste aanmaning: betaal nu", "laatste aanmaning"),
    ("Action required: verify your account", "action required"),
])
def test_shouting_and_fake_urgency_hit(subject: str, evidence: str) -> None:
    # policy: clang E-misleiden
    hit = misleading_subject.check(facts(mail(subject=subject)))
    assert hit is not None and hit.evidence == evidence


@pytest.mark.parametrize("subject", ["Laatste kans: 20% korting bij SHOP", "Nieuw bij HEMA en ING: de KLM-deal",
                                     "Zomeractie: alleen vandaag!", "Reserveer nu: relaxen op Texel", "SALE"])
def test_misleading_subject_near_misses_pass(subject: str) -> None:
    # policy: clang E-misleiden — ordinary sales language, acronyms, "Re" inside a word
    assert misleading_subject.check(facts(mail(subject=subject))) is None


def test_the_senders_own_name_or_domain_in_masthead_capitals_is_not_shouting() -> None:
    # policy: clang E-misleiden — "SOURCEFORGE.NET UPDATE: August 14, 2002" (a real newsletter of
    # tests/corpus/real): the brand in capitals is the masthead, not a raised voice
    assert misleading_subject.check(facts(mail(subject="SHOP.EXAMPLE UPDATE: August 14, 2002"))) is None
    assert misleading_subject.check(facts(mail(subject="SHOP NIEUWS: de zomercollectie is binnen"))) is None
    # another sender's domain, or the brand with the rest of the subject shouting, still shouts
    assert misleading_subject.check(facts(mail(subject="OTHER.EXAMPLE UPDATE: August 14, 2002"))) is not None
    assert misleading_subject.check(facts(mail(subject="SHOP: UW ACCOUNT WORDT GEBLOKKEERD"))) is not None


# --- content.hateful --------------------------------------------------------------------------


def test_hateful_language_in_body_hits() -> None:
    # policy: mailpro M-code-of-conduct (lasterlijk, beledigend, racistisch, discriminerend of haatdragend)
    hit = hateful.check(facts(body("Tijd voor White   Power in Nederland.")))
    assert hit is not None and hit.evidence == "white power"


def test_hateful_language_in_html_hidden_text_hits() -> None:
    # policy: mailpro M-code-of-conduct — hiding it in a display:none block does not help
    html = '<p>Aanbieding</p><div style="display:none">sieg heil</div>'
    hit = hateful.check(facts(mail(text=None, html=html)))
    assert hit is not None and hit.evidence == "sieg heil"


def test_hateful_clean_and_near_miss_pass() -> None:
    # policy: mailpro M-code-of-conduct — "white" and "power" apart, a "powerbank" in white
    assert hateful.check(facts(body("De powerbank in white, met power delivery."))) is None
    assert hateful.check(facts()) is None


# --- content.adult ----------------------------------------------------------------------------


def test_adult_content_hits_accent_and_case_insensitive() -> None:
    # policy: mailpro M-code-of-conduct (erotisch of pornografisch)
    hit = adult.check(facts(body("Bekijk onze ÉROTIEK collectie")))
    assert hit is not None and hit.evidence == "erotiek"


def test_adult_content_allowed_for_account_with_allow_adult() -> None:
    # policy: mailpro M-code-of-conduct ("tenzij specifiek overeengekomen")
    assert adult.check(facts(body("Bekijk onze erotiek collectie"), account=replace(SHOP, allow_adult=True))) is None


def test_adult_near_miss_words_containing_terms() -> None:
    # policy: mailpro M-code-of-conduct — "Middlesex", "seksuele voorlichting", "Essex" are no adult content
    assert adult.check(facts(body("Onze winkels in Middlesex en Essex; brochure seksuele voorlichting."))) is None


def test_adult_a_passing_mention_in_a_long_newsletter_is_no_adult_content() -> None:
    # policy: mailpro M-code-of-conduct (erotisch of pornografisch *content*) — WinXPnews (tests/corpus/real):
    # "... bad guys won't be able to use it to distribute porno and bootlegged software"
    article = "Stop and restart the FTP Server to apply the new permissions on the folder. " * 80
    passing = f"{article}\nNow bad guys won't be able to use it to distribute porno and bootlegged software.\n{article}"
    assert adult.check(facts(body(passing))) is None
    # the same word in a short mail, in the subject, often, or next to another term is about it
    assert adult.check(facts(body("Gratis porno, elke dag nieuw."))) is not None
    assert adult.check(facts(mail(subject="Porno", text=f"{passing}\n{FOOTER_TEXT}{UNSUB}"))) is not None
    assert adult.check(facts(body(passing + " porno" * 12))) is not None
    assert adult.check(facts(body(f"{passing}\nWebcam girls live."))) is not None


# --- content.infringing_links -----------------------------------------------------------------


@pytest.mark.parametrize(("html", "evidence"), [
    ('<a href="https://www.thepiratebay.org/search/x">films</a>', "thepiratebay.org"),
    ('<a href="magnet:?xt=urn:btih:abc&amp;dn=film">download</a>', "magnet:?xt=urn:btih:abc&dn=film"),
    ('<a href="https://files.example/film.TORRENT">download</a>', "https://files.example/film.TORRENT"),
])
def test_infringing_links_hit(html: str, evidence: str) -> None:
    # policy: mailpro M-code-of-conduct (hyperlinks, torrents)
    hit = infringing_links.check(facts(mail(text=None, html=f"<p>{html}</p>")))
    assert hit is not None and hit.evidence == evidence


def test_infringing_link_written_in_plain_text_and_torrent_attachment() -> None:
    # policy: mailpro M-code-of-conduct
    assert infringing_links.check(facts(body("Kijk op https://1337x.to/movie/123"))) is not None
    raw = mail(attachments=(("film.torrent", "application/x-bittorrent", b"d8:announce3:udp"),))
    assert infringing_links.check(facts(raw)).evidence == "film.torrent"  # type: ignore[union-attr]


def test_infringing_links_near_miss() -> None:
    # policy: mailpro M-code-of-conduct — a blog about piracy, a host that only ends like a listed one
    text = "Lees ons blog over torrents: https://shop.example/blog/torrent-uitleg en https://notthepiratebay.org.example/"
    assert infringing_links.check(facts(body(text))) is None
    assert infringing_links.check(facts(body("https://mythepiratebay.org/x"))) is None


def test_infringing_hosts_extendable_from_params() -> None:
    # policy: mailpro M-code-of-conduct
    params = {"wordlists": {"infringing_hosts": ["warez.example"]}}
    assert infringing_links.check(facts(body("https://dl.warez.example/x"), params=params)) is not None


# --- content.personal_data --------------------------------------------------------------------


def test_validators() -> None:
    assert bsn_valid("111222333") and not bsn_valid("111222334") and not bsn_valid("000000000")
    assert iban_valid("NL91ABNA0417164300") and not iban_valid("NL91ABNA0417164301")
    assert not iban_valid("NL91ABNA04171643")  # wrong length for NL
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    assert mask_iban("NL91 ABNA 0417 1643 00") == "NL** **** **** **** 00"
    assert mask_card("4111111111111111") == "**** **** **** 1111"


@pytest.mark.parametrize(("text", "evidence"), [
    ("Winnaar: Jan, BSN 111222333.", "*******33"),
    ("Winnaar: Jan, bsn 1112.22.333", "*******33"),
    ("Rekening van Jan: NL91 ABNA 0417 1643 00", "NL** **** **** **** 00"),
    ("Kaart van Jan: 4111 1111 1111 1111", "**** **** **** 1111"),
])
def test_personal_data_hits_with_masked_evidence(text: str, evidence: str) -> None:
    # policy: mailpro M-code-of-conduct (privacy van derden)
    hit = personal_data.check(facts(body(text)))
    assert hit is not None and hit.evidence == evidence
    digits = "".join(c for c in text if c.isdigit())
    assert digits[:6] not in hit.evidence.replace(" ", "") and digits not in hit.detail


@pytest.mark.parametrize("text", [
    "Ordernummer 111222334 (geen geldig BSN)",
    "IBAN NL91 ABNA 0417 1643 01 (controlegetal klopt niet)",
    "Kaart 4111 1111 1111 1112",
    "Bel 020 123 4567 of +31 6 12345678, artikel 8712345678901",
    "Bekijk https://shop.example/p/111222333",
])
def test_personal_data_near_misses_pass(text: str) -> None:
    # policy: mailpro M-code-of-conduct — failing check digits, phone numbers, EAN codes, URLs
    assert personal_data.check(facts(body(text))) is None


def test_personal_data_own_numbers_allowed_by_params() -> None:
    # policy: mailpro M-code-of-conduct — the sender's own donation IBAN is not a third party's
    params = {"personal_data_allow": ["NL91 ABNA 0417 1643 00"]}
    assert personal_data.check(facts(body("Doneer op NL91 ABNA 0417 1643 00"), params=params)) is None


def test_personal_data_only_in_marketing_messages() -> None:
    # policy: mailpro M-code-of-conduct ("in a marketing message", POLICY.md)
    raw = body("Uw IBAN NL91 ABNA 0417 1643 00 is geregistreerd.")
    assert "content.personal_data" in evaluate(facts(raw)).rule_ids
    assert "content.personal_data" not in evaluate(facts(raw, stream=ORDERS)).rule_ids


# --- content.malware --------------------------------------------------------------------------


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


@pytest.mark.parametrize(("attachment", "evidence"), [
    (("setup.exe", "application/octet-stream", b"MZ\x90\x00"), "setup.exe"),
    (("factuur.pdf", "application/pdf", b"MZ\x90\x00"), "factuur.pdf"),
    (("run.js", "application/javascript", b"x=1"), "run.js"),
    (("order.xlsm", "application/vnd.ms-excel.sheet.macroEnabled.12", b"PK"), "order.xlsm"),
    (("docs.zip", "application/zip", _zip({"a/b.vbs": b"x"})), "docs.zip/a/b.vbs"),
])
def test_malware_dangerous_attachments_hit(attachment: tuple[str, str, bytes], evidence: str) -> None:
    # policy: mailpro M-code-of-conduct ("kwaadaardige inhoud … virussen of spyware")
    hit = malware.check(facts(mail(attachments=(attachment,))))
    assert hit is not None and hit.evidence == evidence


def test_malware_eicar_in_text_or_zip_hits() -> None:
    # policy: mailpro M-code-of-conduct
    assert malware.check(facts(body(EICAR))).evidence.startswith("EICAR")  # type: ignore[union-attr]
    raw = mail(attachments=(("test.zip", "application/zip", _zip({"eicar.com": EICAR.encode()})),))
    assert malware.check(facts(raw)) is not None


def test_malware_clamd_result_from_the_relay_hits() -> None:
    # policy: mailpro M-code-of-conduct — optional clamd scan, passed in as a fact
    hit = malware.check(replace(facts(), shell=ShellFacts(clamd_result="Win.Test.EICAR_HDB-1")))
    assert hit is not None and hit.evidence == "Win.Test.EICAR_HDB-1"
    assert malware.check(replace(facts(), shell=ShellFacts(clamd_result=""))) is None


def test_malware_near_miss_harmless_archive_and_documents() -> None:
    # policy: mailpro M-code-of-conduct — a zip of PDFs, a .docx without macros, a text mentioning .exe
    harmless = _zip({"a.pdf": b"%PDF-1.4", "b.docx": _zip({"word/document.xml": b"<w/>"})})
    raw = mail(
        text="Download de app niet als setup.exe maar via de store.\n" + FOOTER_TEXT + UNSUB,
        attachments=(("docs.zip", "application/zip", harmless), ("brief.docx", "application/octet-stream", b"PK\x03\x04")),
    )
    assert malware.check(facts(raw)) is None


def test_malware_rejects_through_the_engine_on_every_profile_and_transactional_stream() -> None:
    # policy: mailpro M-code-of-conduct — malware is rejected on mailpro, clang and strict alike
    raw = mail(attachments=(("x.exe", "application/octet-stream", b"MZ"),))
    for profile in ("strict", "mailpro", "clang"):
        verdict = evaluate(facts(raw, stream=ORDERS, profile=profile), profile)
        assert verdict.outcome is Outcome.REJECT
        assert verdict.deciding is not None and verdict.deciding.rule == "content.malware"
    assert load_profile("strict").action("content.malware") is Action.REJECT


def test_clean_default_message_has_no_content_findings() -> None:
    # policy: mailpro M-code-of-conduct, clang E-misleiden
    verdict = evaluate(facts())
    assert verdict.findings == ()
