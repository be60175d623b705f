"""The words of the recipient's pages in nl, en, de and fr, and the choice among them from
Accept-Language or the visible switch (`?lang=`). Placeholders are filled, escaped, by the templates."""

from __future__ import annotations

from typing import Mapping

DEFAULT_LANGUAGE = "en"
# The switch shows each language in its own name.
LANGUAGE_NAMES = {"nl": "Nederlands", "en": "English", "de": "Deutsch", "fr": "Français"}

TEXTS: Mapping[str, Mapping[str, str]] = {
    "en": {
        "language": "Language",
        "unsubscribe_title": "Unsubscribe",
        "lead_topic": "{who} sends {topic} to {email}.",
        "lead_all": "{who} sends marketing e-mail to {email}.",
        "all_marketing": "all marketing e-mail",
        "scope_account": "Unsubscribing stops {what} from {scope} only.",
        "scope_parent": "You signed up at {parent}, so unsubscribing stops {what} from {parent} and all its brands: {brands}.",
        "service_note": "Service messages, for example about an order, are not affected.",
        "button": "Unsubscribe",
        "immediately": "It takes effect immediately. You do not need to do anything else.",
        "preferences_link": "Choose which e-mails you receive instead",
        "done_title": "You are unsubscribed",
        "done_topic": "{email} will not receive {topic} from {scope} any more.",
        "done_all": "{email} will not receive marketing e-mail from {scope} any more.",
        "done_when": "Stopped on {when}, with immediate effect.",
        "preferences_title": "Your e-mail preferences",
        "preferences_lead": "The e-mails {who} may send to {email}, at the level where you signed up. Stop any of them, or all at once.",
        "from": "from {scope}",
        "parent_words": "{parent} and all its brands ({brands})",
        "receiving": "You receive this",
        "stopped_on": "Stopped on {when}",
        "stopped": "Stopped",
        "stop": "Stop",
        "stop_all": "Stop all of these e-mails",
        "nothing_left": "You receive none of these e-mails any more.",
        "changed": "Stopped with immediate effect ({when}):",
        "bad_token": "This link is not valid. Please use the link from the most recent e-mail.",
        "bad_choice": "That choice is not available. Nothing was changed.",
        "not_found_title": "Link not valid",
        "sender": "Sender: {legal}",
    },
    "nl": {
        "language": "Taal",
        "unsubscribe_title": "Afmelden",
        "lead_topic": "{who} stuurt {topic} naar {email}.",
        "lead_all": "{who} stuurt marketing-e-mail naar {email}.",
        "all_marketing": "alle marketing-e-mail",
        "scope_account": "Afmelden stopt {what} van alleen {scope}.",
        "scope_parent": "U hebt zich aangemeld bij {parent}, dus afmelden stopt {what} van {parent} en al haar merken: {brands}.",
        "service_note": "Serviceberichten, bijvoorbeeld over een bestelling, blijven komen.",
        "button": "Afmelden",
        "immediately": "Dit gaat direct in. U hoeft verder niets te doen.",
        "preferences_link": "Kies liever welke e-mails u ontvangt",
        "done_title": "U bent afgemeld",
        "done_topic": "{email} ontvangt {topic} niet meer van {scope}.",
        "done_all": "{email} ontvangt geen marketing-e-mail meer van {scope}.",
        "done_when": "Gestopt op {when}, met directe ingang.",
        "preferences_title": "Uw e-mailvoorkeuren",
        "preferences_lead": "De e-mails die {who} naar {email} mag sturen, op het niveau waar u zich aanmeldde. Stop ze los of allemaal tegelijk.",
        "from": "van {scope}",
        "parent_words": "{parent} en al haar merken ({brands})",
        "receiving": "U ontvangt dit",
        "stopped_on": "Gestopt op {when}",
        "stopped": "Gestopt",
        "stop": "Stoppen",
        "stop_all": "Stop al deze e-mails",
        "nothing_left": "U ontvangt geen van deze e-mails meer.",
        "changed": "Gestopt met directe ingang ({when}):",
        "bad_token": "Deze afmeldlink is niet geldig. Gebruik de link uit de meest recente e-mail.",
        "bad_choice": "Die keuze is niet beschikbaar. Er is niets veranderd.",
        "not_found_title": "Link niet geldig",
        "sender": "Afzender: {legal}",
    },
    "de": {
        "language": "Sprache",
        "unsubscribe_title": "Abmelden",
        "lead_topic": "{who} sendet {topic} an {email}.",
        "lead_all": "{who} sendet Marketing-E-Mails an {email}.",
        "all_marketing": "alle Marketing-E-Mails",
        "scope_account": "Die Abmeldung beendet {what} nur von {scope}.",
        "scope_parent": "Sie haben sich bei {parent} angemeldet, daher beendet die Abmeldung {what} von {parent} und allen Marken: {brands}.",
        "service_note": "Servicenachrichten, etwa zu einer Bestellung, sind nicht betroffen.",
        "button": "Abmelden",
        "immediately": "Das gilt sofort. Sie müssen sonst nichts tun.",
        "preferences_link": "Stattdessen auswählen, welche E-Mails Sie erhalten",
        "done_title": "Sie sind abgemeldet",
        "done_topic": "{email} erhält {topic} nicht mehr von {scope}.",
        "done_all": "{email} erhält keine Marketing-E-Mails mehr von {scope}.",
        "done_when": "Beendet am {when}, mit sofortiger Wirkung.",
        "preferences_title": "Ihre E-Mail-Einstellungen",
        "preferences_lead": "Die E-Mails, die {who} an {email} senden darf, auf der Ebene, auf der Sie sich angemeldet haben. Beenden Sie einzelne oder alle auf einmal.",
        "from": "von {scope}",
        "parent_words": "{parent} und allen Marken ({brands})",
        "receiving": "Sie erhalten dies",
        "stopped_on": "Beendet am {when}",
        "stopped": "Beendet",
        "stop": "Beenden",
        "stop_all": "Alle diese E-Mails beenden",
        "nothing_left": "Sie erhalten keine dieser E-Mails mehr.",
        "changed": "Mit sofortiger Wirkung beendet ({when}):",
        "bad_token": "Dieser Link ist nicht gültig. Bitte verwenden Sie den Link aus der neuesten E-Mail.",
        "bad_choice": "Diese Auswahl ist nicht verfügbar. Es wurde nichts geändert.",
        "not_found_title": "Link ungültig",
        "sender": "Absender: {legal}",
    },
    "fr": {
        "language": "Langue",
        "unsubscribe_title": "Se désabonner",
        "lead_topic": "{who} envoie {topic} à {email}.",
        "lead_all": "{who} envoie des e-mails marketing à {email}.",
        "all_marketing": "tous les e-mails marketing",
        "scope_account": "Le désabonnement arrête {what} de {scope} uniquement.",
        "scope_parent": "Vous vous êtes inscrit auprès de {parent} : le désabonnement arrête donc {what} de {parent} et de toutes ses marques : {brands}.",
        "service_note": "Les messages de service, par exemple sur une commande, ne sont pas concernés.",
        "button": "Se désabonner",
        "immediately": "Cela prend effet immédiatement. Vous n’avez rien d’autre à faire.",
        "preferences_link": "Choisir plutôt les e-mails que vous recevez",
        "done_title": "Vous êtes désabonné",
        "done_topic": "{email} ne recevra plus {topic} de {scope}.",
        "done_all": "{email} ne recevra plus d’e-mails marketing de {scope}.",
        "done_when": "Arrêté le {when}, avec effet immédiat.",
        "preferences_title": "Vos préférences e-mail",
        "preferences_lead": "Les e-mails que {who} peut envoyer à {email}, au niveau où vous vous êtes inscrit. Arrêtez-les un par un ou tous à la fois.",
        "from": "de {scope}",
        "parent_words": "{parent} et de toutes ses marques ({brands})",
        "receiving": "Vous recevez ceci",
        "stopped_on": "Arrêté le {when}",
        "stopped": "Arrêté",
        "stop": "Arrêter",
        "stop_all": "Arrêter tous ces e-mails",
        "nothing_left": "Vous ne recevez plus aucun de ces e-mails.",
        "changed": "Arrêté avec effet immédiat ({when}) :",
        "bad_token": "Ce lien n’est pas valide. Veuillez utiliser le lien du dernier e-mail reçu.",
        "bad_choice": "Ce choix n’est pas disponible. Rien n’a été modifié.",
        "not_found_title": "Lien non valide",
        "sender": "Expéditeur : {legal}",
    },
}


def negotiate(accept_language: str, chosen: str | None = None) -> str:
    """The visitor's explicit choice (`?lang=`) when it is one of ours, else the best Accept-Language
    match by q-value (first listed wins a tie), else English."""
    if chosen is not None and chosen in TEXTS:
        return chosen
    best, best_q = DEFAULT_LANGUAGE, 0.0
    for part in accept_language.split(","):
        tag, _, params = part.strip().partition(";")
        q = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                q = float(params[2:])
            except ValueError:
                q = 0.0
        lang = tag.strip().lower().split("-")[0]
        if lang in TEXTS and q > best_q:
            best, best_q = lang, q
    return best
