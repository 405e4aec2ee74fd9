//! The built-in detectors: for each entity type its patterns (compiled together with every
//! other detector into one automaton), its validator, its base confidence and its context
//! words.
//!
//! Pattern conventions (syntax: Unicode mode off, so `\b` is the ASCII word boundary and
//! classes are ASCII): every repetition is bounded, so every pattern has a maximum length;
//! patterns are loose shapes, the validator decides. Order matters: when several patterns
//! match at the same leftmost position the earliest wins; if its validator rejects, the
//! others (and shorter ends of every pattern) are tried at the same position.

use super::validate::Check;

/// A built-in detector.
pub(crate) struct Builtin {
    pub entity: &'static str,
    pub patterns: &'static [&'static str],
    pub check: Check,
    /// Confidence when the validator accepts and no context word is around.
    pub base: f32,
    /// Words that raise confidence by `boost` when found within the context window.
    pub context: &'static [&'static str],
    pub boost: f32,
    /// Whether the generic "identifier" words (order, invoice, version, ...) found just
    /// before the value lower its confidence.
    pub negative: bool,
}

/// The e-mail pattern. The engine searches it beside the automaton, from each `@`
/// (`side`), which relies on its shape: a local part of 1 to [`EMAIL_LOCAL_MAX`] characters
/// matching [`email_local`] (or of two bytes outside ASCII, see below) and starting with an
/// ASCII letter or digit after a word boundary, then an `@`, then a domain whose match does
/// not depend on the local part.
/// The local part also takes `'` (`o'brien@example.com`: without it, `o'` stayed in clear
/// before the mask).
///
/// The `@` may be percent-encoded (`%40`), as in query strings and the links APIs return
/// (`/users?email=jane.doe%40example.com&page=2`).
///
/// Past its first character, the local part and the domain's labels may hold characters of
/// two bytes in UTF-8 (U+0080 to U+07FF: accented Latin letters, Greek, Cyrillic, Hebrew,
/// Arabic: `josé@correo.es`, `jane@bücher.de`), half as many characters as ASCII ones, so
/// that the longest match stays as many bytes as before (it bounds how much of a long string
/// the engine carries from one window to the next, `tail_margin`); the validator keeps only
/// letters and digits among them. Not three-byte ones (CJK) for the same reason.
pub(crate) const EMAIL_PATTERN: &str = r"\b[A-Za-z0-9](?:[A-Za-z0-9._%+'-]{0,63}|(?:[A-Za-z0-9._%+'-]|(?u:[\x{80}-\x{7FF}])){0,31})(?:@|%40)(?:[A-Za-z0-9]|(?u:[\x{80}-\x{7FF}]))(?:(?:[A-Za-z0-9-]{0,62}|(?:[A-Za-z0-9-]|(?u:[\x{80}-\x{7FF}])){0,30})\.){1,6}[A-Za-z]{2,24}\b";
/// The longest local part of [`EMAIL_PATTERN`], in characters...
pub(crate) const EMAIL_LOCAL_MAX: usize = 64;
/// ... and of one holding characters outside ASCII (two bytes each: the same bytes at most).
pub(crate) const EMAIL_LOCAL_MAX_WIDE: usize = 32;

/// A phone number's field name, its separator and the first byte of its value, in any text
/// (see [`LABELLED_PHONE_PATTERN`]'s detector). Not in the union automaton: its names start
/// at letters as common as `t`, `c`, `m`, `p`, `f`, and the union following each as a name in
/// progress, beside every other pattern in progress, built ~40% more states on printable
/// text and took dense text from 67 to 58 MB/s and JSON carried in a text through the agent
/// from 24 to 18 (`benches/redact.rs`). It is searched from each `:`, `=` and `>` instead
/// (`side`). Every match holds one of them, the separator (no other part of it can, but the
/// `>` of a hash's arrow right after it): `phone: ...`, `tel=...`, an XML element's
/// `<phone>...` (the validator wants its `<`), `'mobile' => '...'` (PHP, Ruby, Perl) and
/// `[mobile] => ...` (PHP's `print_r`). An
/// abbreviation's dot may follow the name and the suffix (`Tel.:`, `Tel.-Nr.:`). The value
/// may be the first item of a list (`"phones": ["4915112345678", ...]`, or YAML's `phones:`
/// and `  - 4915112345678` on the next line): the engine then reads the other items
/// (`validate::list_items`).
pub(crate) const LABELLED_PHONE_PATTERN: &str = concat!(
    r"(?i:phone|tel|mobile?|cell|msisdn|fax|whatsapp|telefon|telefono|telefoon",
    r"|rufnummer|handynummer|mobilnummer)",
    r"(?:\.?[_ -]?(?i:number|num|no|nr|nummer|numero))?(?i:s)?\.?",
    r#"\\?["'\]]?[ \t]{0,2}(?:=>?|[:>])[ \t]{0,2}"#,
    r"(?:\[[ \t\r\n]{0,32}|\r?\n[ \t]{0,8}-[ \t]{1,2})?",
    r#"\\?["']?[+(0-9]"#,
);
/// The same for an IBAN's field name (`iban: de89370400440532013000`).
pub(crate) const LABELLED_IBAN_PATTERN: &str = concat!(
    r#"(?i:iban)(?i:s)?\\?["'\]]?[ \t]{0,2}(?:=>?|[:>])[ \t]{0,2}"#,
    r"(?:\[[ \t\r\n]{0,32}|\r?\n[ \t]{0,8}-[ \t]{1,2})?",
    r#"\\?["']?[A-Za-z]"#,
);
/// The names that [`LABELLED_PHONE_PATTERN`] and [`LABELLED_IBAN_PATTERN`] read, in small
/// letters (tested against the patterns), ...
pub(crate) const LABEL_NAMES: &[&str] = &[
    "phone",
    "tel",
    "mobile",
    "mobil",
    "cell",
    "msisdn",
    "fax",
    "whatsapp",
    "telefon",
    "telefono",
    "telefoon",
    "rufnummer",
    "handynummer",
    "mobilnummer",
    "iban",
];
/// ... and the words that may follow a phone number's name (after a `_`, `-` or blank), in a
/// text as in a JSON key (`field_kind`).
pub(crate) const LABEL_SUFFIXES: &[&str] = &["number", "num", "no", "nr", "nummer", "numero"];

/// A byte of the local part of [`EMAIL_PATTERN`] (`[A-Za-z0-9._%+'-]`).
pub(crate) fn email_local(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'%' | b'+' | b'\'' | b'-')
}

/// Confidence at or above which a candidate is reported and masked.
pub(crate) const THRESHOLD: f32 = 0.5;
/// Below this, an accepted candidate is compared with the other patterns matching at the same
/// position (a bare `01281278713` after `"pesel":` is a PESEL rather than a phone number).
pub(crate) const STRONG: f32 = 0.75;
/// How much a negative word right before a value lowers its confidence.
pub(crate) const PENALTY: f32 = 0.6;
/// "Right before": at most this many bytes between the negative word and the value, on the
/// same line (`Order #: 0612...`, `"order_id": "0612..."`), and no context word of the
/// detector after it.
pub(crate) const NEGATIVE_GAP: usize = 16;

/// Negative words that say "an identifier" without saying of what (`Patient ID:`, `Employee
/// ID:`, a bare `ID:`): they lower only a value written in one run (`ID: 123456789`), not one
/// written with the separators of its format (`ID: 123-45-6789`, `Patient ID: 1 85 05 78 006
/// 084 91`), which says what it is better than the word does. Words that name the thing
/// (`order id`, `ticket`) lower both.
pub(crate) const NAMELESS_IDS: &[&str] = &["id"];

/// Words for a person's identity number, context of every national ID detector
/// (`National ID: 12345678Z`, `Personal ID: 811218-9876`): a context word ending where the
/// negative word `id` ends, or after it, cancels its penalty. Only phrases that name a
/// person's number: `ID number` or `ID card` after `order`, `ticket` or `product` name the id
/// of something else, and as context they masked such ids (review of 2026-12-01).
pub(crate) const ID_WORDS: &[&str] = &[
    "national id",
    "national identity",
    "identity number",
    "identity card",
    "personal id",
    "personal number",
];

/// The entity types of national identity numbers (which take [`ID_WORDS`] as context).
pub(crate) const NATIONAL_IDS: &[&str] = &[
    "UK_NINO",
    "ES_DNI",
    "ES_NIE",
    "FR_NIR",
    "US_SSN",
    "SE_PERSONNUMMER",
    "NL_BSN",
    "PL_PESEL",
    "DE_TAX_ID",
    "IT_CODICE_FISCALE",
];

/// Words that, just before a number, say it is an identifier of something else.
pub(crate) const NEGATIVE_WORDS: &[&str] = &[
    "order",
    "order no",
    "order id",
    "order number",
    "invoice",
    "inv",
    "ref",
    "reference",
    "ticket",
    "tracking",
    "sku",
    "item",
    "article",
    "product",
    "serial",
    "version",
    "ver",
    "build",
    "release",
    "firmware",
    "revision",
    "rev",
    "sdk",
    "bestellung",
    "bestellnummer",
    "rechnung",
    "rechnungsnummer",
    "auftrag",
    "commande",
    "facture",
    "pedido",
    "factura",
    "ordine",
    "fattura",
    "bestelling",
    "factuur",
    "zamówienie",
    "zamowienie",
    "faktura",
    "beställning",
    "versión",
    "versione",
    "wersja",
    "versie",
    "oid",
    "page",
    "id",
    "transaction",
    "txn",
    "case",
    "job",
    "build no",
    "port",
    "pid",
    "uid",
    "gid",
    "ean",
    "gtin",
    "upc",
    "isbn",
    "barcode",
    "shipment",
];

const MONTHS: &str = "(?i:january|february|march|april|may|june|july|august|september|october|november|december|jan|feb|mar|apr|jun|jul|aug|sep|sept|oct|nov|dec|januar|februar|märz|maerz|mai|juni|juli|oktober|dezember|jänner|janvier|février|fevrier|mars|avril|juin|juillet|août|aout|septembre|octobre|novembre|décembre|decembre|enero|febrero|marzo|abril|mayo|junio|julio|agosto|septiembre|setiembre|octubre|noviembre|diciembre|gennaio|febbraio|aprile|maggio|giugno|luglio|settembre|ottobre|dicembre|januari|februari|maart|mei|augustus|mrt|okt|stycznia|lutego|marca|kwietnia|maja|czerwca|lipca|sierpnia|września|wrzesnia|października|pazdziernika|listopada|grudnia|augusti|maj)";

/// Month-first dates (`March 12, 1984`, `Sept. 3 1990`) are English usage, and English month
/// names are written with a capital: requiring it keeps the automaton from following every
/// lowercase word that starts like a month name as a possible date.
const MONTHS_EN: &str = "(?:J(?i:anuary|an|une|un|uly|ul)|F(?i:ebruary|eb)|M(?i:arch|ar|ay)|A(?i:pril|pr|ugust|ug)|S(?i:eptember|ept|ep)|O(?i:ctober|ct)|N(?i:ovember|ov)|D(?i:ecember|ec))";

/// Month names of the supported languages, lowercase, with their number.
pub(crate) const MONTH_NAMES: &[(&str, u32)] = &[
    ("january", 1),
    ("february", 2),
    ("march", 3),
    ("april", 4),
    ("may", 5),
    ("june", 6),
    ("july", 7),
    ("august", 8),
    ("september", 9),
    ("october", 10),
    ("november", 11),
    ("december", 12),
    ("jan", 1),
    ("feb", 2),
    ("mar", 3),
    ("apr", 4),
    ("jun", 6),
    ("jul", 7),
    ("aug", 8),
    ("sep", 9),
    ("sept", 9),
    ("oct", 10),
    ("nov", 11),
    ("dec", 12),
    ("januar", 1),
    ("februar", 2),
    ("märz", 3),
    ("maerz", 3),
    ("mai", 5),
    ("juni", 6),
    ("juli", 7),
    ("oktober", 10),
    ("dezember", 12),
    ("jänner", 1),
    ("janvier", 1),
    ("février", 2),
    ("fevrier", 2),
    ("mars", 3),
    ("avril", 4),
    ("juin", 6),
    ("juillet", 7),
    ("août", 8),
    ("aout", 8),
    ("septembre", 9),
    ("octobre", 10),
    ("novembre", 11),
    ("décembre", 12),
    ("decembre", 12),
    ("enero", 1),
    ("febrero", 2),
    ("marzo", 3),
    ("abril", 4),
    ("mayo", 5),
    ("junio", 6),
    ("julio", 7),
    ("agosto", 8),
    ("septiembre", 9),
    ("setiembre", 9),
    ("octubre", 10),
    ("noviembre", 11),
    ("diciembre", 12),
    ("gennaio", 1),
    ("febbraio", 2),
    ("aprile", 4),
    ("maggio", 5),
    ("giugno", 6),
    ("luglio", 7),
    ("settembre", 9),
    ("ottobre", 10),
    ("dicembre", 12),
    ("januari", 1),
    ("februari", 2),
    ("maart", 3),
    ("mei", 5),
    ("augustus", 8),
    ("mrt", 3),
    ("okt", 10),
    ("stycznia", 1),
    ("lutego", 2),
    ("marca", 3),
    ("kwietnia", 4),
    ("maja", 5),
    ("czerwca", 6),
    ("lipca", 7),
    ("sierpnia", 8),
    ("września", 9),
    ("wrzesnia", 9),
    ("października", 10),
    ("pazdziernika", 10),
    ("listopada", 11),
    ("grudnia", 12),
    ("augusti", 8),
    ("maj", 5),
];

const DOB_WORDS: &[&str] = &[
    "born",
    "birth",
    "dob",
    "d.o.b",
    "birthday",
    "birthdate",
    "date of birth",
    "date_of_birth",
    "birth_date",
    "date_naissance",
    "geboren",
    "geb",
    "geburtsdatum",
    "geburtstag",
    "né",
    "née",
    "né le",
    "née le",
    "naissance",
    "date de naissance",
    "nacido",
    "nacida",
    "nacimiento",
    "fecha de nacimiento",
    "nato",
    "nata",
    "nato il",
    "nata il",
    "nascita",
    "data di nascita",
    "geboortedatum",
    "geboren op",
    "urodzony",
    "urodzona",
    "urodzenia",
    "data urodzenia",
    "född",
    "födelsedatum",
    "fodelsedatum",
    "fødselsdato",
];

const PHONE_WORDS: &[&str] = &[
    "tel",
    "tel.",
    "phone",
    "telephone",
    "telefon",
    "telefoon",
    "téléphone",
    "telephone",
    "teléfono",
    "telefono",
    "mobile",
    "mobil",
    "mobiel",
    "móvil",
    "movil",
    "cell",
    "cellulare",
    "portable",
    "handy",
    "gsm",
    "call",
    "fax",
    "komórka",
    "komorka",
    "tfn",
    "contact",
];

const PASSPORT_WORDS: &[&str] = &[
    "passport",
    "passport no",
    "passport number",
    "reisepass",
    "reisepassnummer",
    "pass-nr",
    "passnummer",
    "passeport",
    "pasaporte",
    "passaporto",
    "paspoort",
    "paspoortnummer",
    "paszport",
    "paszportu",
    "pass",
    "passnr",
];

/// Whether a field named `label` (a JSON key) holds a credential, whose value is then masked
/// whole (`SECRET`) whatever it looks like: the key, lowercased without separators and a
/// plural `s`, ends with a credential's name (`password`, `db_password`, `clientSecret`,
/// `AWS_SECRET_ACCESS_KEY`, `apiKey`, `refresh_token`, `private_key`). Not `token` alone:
/// `nextPageToken` is a cursor the client must get back.
pub(crate) fn secret_label(label: &str) -> bool {
    const NAMES: &[&str] = &[
        "password",
        "passwd",
        "passphrase",
        "secret",
        "secretkey",
        "secretaccesskey",
        "apikey",
        "apitoken",
        "accesstoken",
        "refreshtoken",
        "authtoken",
        "privatekey",
        "accountkey",
        "sharedaccesskey",
        "sessiontoken",
    ];
    let b = label.as_bytes();
    if b.len() > 64 {
        return false;
    }
    // Asked for every string value of a JSON body: most keys end in two letters no
    // credential's name ends with (`id`, `me`, `at`, `le`), and are passed over at that.
    let mut end = b.len();
    while end > 0 && !b[end - 1].is_ascii_alphanumeric() {
        end -= 1;
    }
    if end > 1 && b[end - 1].eq_ignore_ascii_case(&b's') {
        end -= 1;
    }
    let mut tail = b[..end]
        .iter()
        .rev()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(u8::to_ascii_lowercase);
    let (Some(last), Some(before)) = (tail.next(), tail.next()) else {
        return false;
    };
    let endings = matches!(
        (before, last),
        (b'r' | b'w', b'd') | (b's', b'e') | (b'e', b't' | b'y' | b'n')
    );
    endings
        && NAMES
            .iter()
            .any(|n| ends_with_name(&b[..end], n.as_bytes()))
}

/// An entity a field's name says its value is, read whole on that name alone (see
/// [`field_kind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FieldKind {
    Phone,
    Iban,
}

/// What a field named `label` (a JSON key, a CSV column) holds when its name says so: its last
/// word (words split at `_`, `-`, spaces and camel case; a plural `s` and a trailing `number`,
/// `no`, `nr`... passed over: `phone_number`, `mobilePhone`, `customer_phones`, `tel_no`,
/// `MSISDN`, `Telefonnummer`) names a phone number, or an IBAN. Such values are often stored
/// in forms no pattern reads as the entity without a label (`"phone": "4915112345678"`, E.164
/// without its `+`; `"iban": "de89370400440532013000"`, in small letters). Only the last word
/// counts: `phone_verified_at` holds a time, `ibanCountry` a country.
pub(crate) fn field_kind(label: &str) -> Option<FieldKind> {
    const PHONE: &[&str] = &[
        "tel",
        "mobile",
        "mobil",
        "cell",
        "msisdn",
        "fax",
        "whatsapp",
        "telefon",
        "telefono",
        "telefoon",
        "telefonnummer",
        "rufnummer",
        "handynummer",
        "mobilnummer",
        "phonenumber",
    ];
    // Asked for every string value of a JSON body: cheap, no allocation.
    let b = label.as_bytes();
    if b.len() > 64 {
        return None;
    }
    let mut end = b.len();
    for suffix_allowed in [true, false] {
        let (s, e) = last_word(b, end)?;
        let mut w = &b[s..e];
        if w.len() > 3 && w.last().is_some_and(|c| c.eq_ignore_ascii_case(&b's')) {
            w = &w[..w.len() - 1];
        }
        let is = |name: &str| w.eq_ignore_ascii_case(name.as_bytes());
        if suffix_allowed && LABEL_SUFFIXES.iter().any(|n| is(n)) {
            end = s;
            continue;
        }
        let lower_ends_phone = w.len() >= 5 && w[w.len() - 5..].eq_ignore_ascii_case(b"phone");
        return if lower_ends_phone || PHONE.iter().any(|n| is(n)) {
            Some(FieldKind::Phone)
        } else if is("iban") {
            Some(FieldKind::Iban)
        } else {
            None
        };
    }
    None
}

/// The last word of `b[..end]`: ASCII letters and digits, split where a small letter meets a
/// capital (`mobilePhone`).
fn last_word(b: &[u8], mut end: usize) -> Option<(usize, usize)> {
    while end > 0 && !b[end - 1].is_ascii_alphanumeric() {
        end -= 1;
    }
    if end == 0 {
        return None;
    }
    let mut s = end - 1;
    while s > 0
        && b[s - 1].is_ascii_alphanumeric()
        && !(b[s - 1].is_ascii_lowercase() && b[s].is_ascii_uppercase())
    {
        s -= 1;
    }
    Some((s, end))
}

/// Whether `key`, read backwards without its non-alphanumeric bytes and in small letters,
/// ends with `name`.
fn ends_with_name(key: &[u8], name: &[u8]) -> bool {
    let mut bytes = key
        .iter()
        .rev()
        .filter(|b| b.is_ascii_alphanumeric())
        .map(u8::to_ascii_lowercase);
    name.iter().rev().all(|&c| bytes.next() == Some(c))
}

/// The built-in credentials: masked as `partial`, they show none of their characters.
pub(crate) const SECRET_ENTITIES: &[&str] = &[
    "PRIVATE_KEY",
    "JWT",
    "AWS_ACCESS_KEY",
    "GITHUB_TOKEN",
    "SLACK_TOKEN",
    "GOOGLE_API_KEY",
    "STRIPE_KEY",
    "OPENAI_KEY",
    "ANTHROPIC_KEY",
    "GITLAB_TOKEN",
    "NPM_TOKEN",
    "PYPI_TOKEN",
    "HUGGINGFACE_TOKEN",
    "SENDGRID_KEY",
    "SECRET",
];

pub(crate) const BUILTINS: &[Builtin] = &[
    // ---- secrets -------------------------------------------------------------------------
    Builtin {
        entity: "PRIVATE_KEY",
        // PEM (`RSA`, `EC`, `ENCRYPTED`, `OPENSSH`...) and OpenPGP armour (`PGP ... BLOCK`).
        patterns: &[r"-----BEGIN (?:[A-Z0-9]{1,12} ){0,3}PRIVATE KEY(?: BLOCK)?-----"],
        check: Check::PemBlock,
        base: 0.99,
        context: &[],
        boost: 0.0,
        negative: false,
    },
    Builtin {
        entity: "JWT",
        patterns: &[r"\beyJ[A-Za-z0-9_-]{8,64}"],
        check: Check::Jwt,
        base: 0.95,
        context: &[],
        boost: 0.0,
        negative: false,
    },
    Builtin {
        entity: "AWS_ACCESS_KEY",
        patterns: &[r"\b(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}\b"],
        check: Check::None,
        base: 0.95,
        context: &[],
        boost: 0.0,
        negative: false,
    },
    Builtin {
        entity: "GITHUB_TOKEN",
        patterns: &[
            r"\b(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{36}\b",
            r"\bgithub_pat_[A-Za-z0-9_]{22,255}\b",
        ],
        check: Check::None,
        base: 0.95,
        context: &[],
        boost: 0.0,
        negative: false,
    },
    Builtin {
        entity: "SLACK_TOKEN",
        patterns: &[r"\bxox[abposr]-[A-Za-z0-9-]{10,250}"],
        check: Check::SlackToken,
        base: 0.95,
        context: &[],
        boost: 0.0,
        negative: false,
    },
    Builtin {
        entity: "GOOGLE_API_KEY",
        patterns: &[r"\bAIza[0-9A-Za-z_-]{35}"],
        check: Check::TokenEnd,
        base: 0.95,
        context: &[],
        boost: 0.0,
        negative: false,
    },
    Builtin {
        // Secret and restricted keys; not the publishable `pk_` ones, which pages embed.
        // (Here and below, the pattern ends at the key's shortest length and the validator
        // extends it to the key's end: a long bounded repeat in the union takes the
        // automaton a state per byte after every `sk-`, and lengthens the longest pattern,
        // which sets how far before a reported match the rewriter looks.)
        entity: "STRIPE_KEY",
        patterns: &[r"\b(?:sk|rk)_(?:live|test)_[0-9A-Za-z]{16}"],
        check: Check::Token,
        base: 0.95,
        context: &[],
        boost: 0.0,
        negative: false,
    },
    Builtin {
        // Before `OPENAI_KEY`, whose pattern also takes these.
        entity: "ANTHROPIC_KEY",
        patterns: &[r"\bsk-ant-[a-z]{3,6}[0-9]{2}-[A-Za-z0-9_-]{32}"],
        check: Check::Token,
        base: 0.95,
        context: &[],
        boost: 0.0,
        negative: false,
    },
    Builtin {
        // `sk-` and 48 characters, or project, service-account and admin keys. `sk-` leads
        // slugs too (`sk-learn-compatible-estimators`): the key must mix capitals, small
        // letters and digits, as random keys do.
        entity: "OPENAI_KEY",
        patterns: &[r"\bsk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20}"],
        check: Check::RandomToken,
        base: 0.9,
        context: &[],
        boost: 0.0,
        negative: false,
    },
    Builtin {
        entity: "GITLAB_TOKEN",
        patterns: &[r"\bglpat-[A-Za-z0-9_-]{20}"],
        check: Check::Token,
        base: 0.95,
        context: &[],
        boost: 0.0,
        negative: false,
    },
    Builtin {
        entity: "NPM_TOKEN",
        patterns: &[r"\bnpm_[A-Za-z0-9]{36}\b"],
        check: Check::None,
        base: 0.95,
        context: &[],
        boost: 0.0,
        negative: false,
    },
    Builtin {
        // A macaroon whose first bytes encode `pypi.org`.
        entity: "PYPI_TOKEN",
        patterns: &[r"\bpypi-AgEIcHlwaS5vcmc[A-Za-z0-9_-]{16}"],
        check: Check::Token,
        base: 0.95,
        context: &[],
        boost: 0.0,
        negative: false,
    },
    Builtin {
        entity: "HUGGINGFACE_TOKEN",
        patterns: &[r"\bhf_[A-Za-z0-9]{34}\b"],
        check: Check::None,
        base: 0.95,
        context: &[],
        boost: 0.0,
        negative: false,
    },
    Builtin {
        entity: "SENDGRID_KEY",
        patterns: &[r"\bSG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}\b"],
        check: Check::None,
        base: 0.95,
        context: &[],
        boost: 0.0,
        negative: false,
    },
    Builtin {
        // A credential on a command line, as process lists, shell histories and CI logs show
        // them: `--password S3cret` (`=` is the `SECRET` name pattern's), `--token ...`,
        // `curl -u user:S3cret`, `--user user:S3cret`. The pattern ends at the value's first
        // byte (after an optional quote), which the validator extends to the value's end;
        // variables and placeholders (`$DB_PASS`, `<password>`) are no value.
        entity: "SECRET",
        patterns: &[
            concat!(
                r"--(?i:password|passwd|pass|token|api-?key|secret|client-secret|auth-token",
                r#"|access-token) ["']?[!#-&(-~]"#,
            ),
            r#"(?:[ \t]-u ?|--user[ =])["']?[A-Za-z0-9._%+@-]{1,64}:[!#-&(-~]"#,
        ],
        check: Check::CliCredential,
        base: 0.9,
        context: &[],
        boost: 0.0,
        negative: false,
    },
    Builtin {
        // The credentials of an HTTP `Authorization` header as logs and traces print it:
        // `Bearer` and an opaque token (a JWT is the `JWT` detector's), `Basic` and
        // `user:password` in base64. The pattern ends at the token's first byte, which the
        // validator extends to its end; prose (`basic information`, `the bearer of`) is no
        // token.
        entity: "SECRET",
        patterns: &[r"\b(?i:bearer|basic)[ \t]{1,2}[A-Za-z0-9._~+/-]"],
        check: Check::AuthToken,
        base: 0.9,
        context: &[],
        boost: 0.0,
        negative: false,
    },
    Builtin {
        // A value assigned to a credential's name, in any text: `DB_PASSWORD=...` (env
        // files), `password: ...` (YAML), `"client_secret": "..."` (JSON inside a text, also
        // escaped), `api_key = ...` (INI), `?access_token=...` (URLs). The pattern ends at the
        // value's first byte, which the validator extends to the value's end (at most
        // `SECRET_MAX`): with the value in the pattern, every blank would hold a match of
        // some 300 bytes and the closure rescan would read that far around every mask. A
        // JSON member whose key names a credential is masked whole whatever its value
        // (`secret_label`).
        entity: "SECRET",
        patterns: &[concat!(
            // (Names of two words are also written apart, in prose and forms: `AWS secret
            // key: ...`, `API key: ...`.)
            r"(?i:password|passwd|passphrase|secret(?:[_ -]?access)?(?:[_ -]?key)?",
            r"|api[_ -]?(?:key|secret|token)|(?:access|refresh|auth)[_ -]?token|private[_ -]?key",
            // (Azure connection strings: `AccountKey=...;`, `SharedAccessKey=...`.)
            r"|account[_-]?key|shared[_-]?access[_-]?key",
            // (Session cookies: `sessionid=...`, `PHPSESSID=...`, `JSESSIONID=...`.)
            r"|sessionid|phpsessid|jsessionid|session[_-]token)",
            // (The value's first byte: printable ASCII but blanks and quotes; the validator
            // refuses masks and templates, `[SECRET:...]`, `${DB_PASSWORD}`.)
            r#"\\?["']?[ \t]{0,2}[:=][ \t]{0,2}\\?["']?[!#-&(-~]"#,
        )],
        check: Check::Credential,
        base: 0.95,
        context: &[],
        boost: 0.0,
        negative: false,
    },
    Builtin {
        // A phone number under a field's name in any text, in a form the patterns below leave
        // alone without it: `"mobile": "4915112345678"` (E.164 without its `+`) in JSON
        // carried in a text (JSON Lines or a document longer than the JSON rewriter reads
        // whole, a log line, a text/plain body), YAML (`phone: 030 1234567`), `tel=...`. The pattern ends at the
        // value's first byte; the validator reads the name back as `field_kind` reads a JSON
        // key, and the value whole, as under such a key (at most `LABELLED_MAX` bytes).
        // Searched beside the union automaton, from each `:` and `=` (see `side`).
        entity: "PHONE",
        patterns: &[LABELLED_PHONE_PATTERN],
        check: Check::LabelledPhone,
        base: 0.95,
        context: &[],
        boost: 0.0,
        negative: false,
    },
    Builtin {
        // The same for an IBAN in small letters in one run (`iban: de89370400440532013000`),
        // which the IBAN patterns read only in capitals or in groups.
        entity: "IBAN",
        patterns: &[LABELLED_IBAN_PATTERN],
        check: Check::LabelledIban,
        base: 0.95,
        context: &[],
        boost: 0.0,
        negative: false,
    },
    Builtin {
        // The password in a URL's user information: `postgres://app:...@db:5432/crm`,
        // `redis://:...@cache:6379` (connection strings in env dumps and tool results). The
        // pattern ends at the password's first byte; the validator extends it to the `@`.
        // It starts at `://`, not at the scheme: a scheme's letters are everywhere, and the
        // automaton following each run of them as a possible scheme took some 400 KB of
        // cache on printable text instead of 150 (measured by the test
        // `custom_detectors_that_thrash_the_automaton_are_reported`).
        entity: "SECRET",
        patterns: &[concat!(
            r"://[A-Za-z0-9._~%!$&'()*+,;=-]{0,64}:",
            r"[A-Za-z0-9._~%!$&'()*+,;=-]",
        )],
        check: Check::UrlCredential,
        base: 0.95,
        context: &[],
        boost: 0.0,
        negative: false,
    },
    // ---- banking ---------------------------------------------------------------------------
    Builtin {
        entity: "IBAN",
        patterns: &[
            r"\b[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}\b",
            // In small letters, as typed by hand, in groups of four (`de89 3704 ...`). Not
            // in one run: the union would then follow every run of small letters and digits
            // (base64 images in tool results) as a possible IBAN, a third of its speed there.
            r"\b[A-Za-z]{2}[0-9]{2}(?: [A-Za-z0-9]{4}){1,7} [A-Za-z0-9]{1,4}\b",
            // In groups of four joined by `-` (`DE89-3704-0044-...`, as forms write it).
            r"\b[A-Za-z]{2}[0-9]{2}(?:-[A-Za-z0-9]{4}){2,7}-[A-Za-z0-9]{1,4}\b",
        ],
        check: Check::Iban,
        base: 0.95,
        context: &[
            "iban", "account", "konto", "compte", "cuenta", "conto", "rekening", "rachunek", "bank",
        ],
        boost: 0.05,
        negative: false,
    },
    // ---- contact -------------------------------------------------------------------------
    Builtin {
        entity: "EMAIL",
        patterns: &[EMAIL_PATTERN],
        check: Check::Email,
        base: 0.95,
        context: &[],
        boost: 0.0,
        negative: false,
    },
    // ---- national ids with strong structure -------------------------------------------------
    Builtin {
        entity: "IT_CODICE_FISCALE",
        patterns: &[
            r"\b[A-Z]{6}[0-9LMNP-V]{2}[ABCDEHLMPRST][0-9LMNP-V]{2}[A-Z][0-9LMNP-V]{3}[A-Z]\b",
        ],
        check: Check::ItCf,
        base: 0.9,
        context: &["codice fiscale", "cf", "c.f", "fiscale"],
        boost: 0.1,
        negative: false,
    },
    Builtin {
        entity: "UK_NINO",
        patterns: &[
            r"\b[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?[0-9]{2} ?[0-9]{2} ?[0-9]{2} ?[A-D]\b",
        ],
        check: Check::Nino,
        base: 0.75,
        context: &["national insurance", "nino", "ni number", "ni no"],
        boost: 0.2,
        negative: true,
    },
    Builtin {
        entity: "ES_NIE",
        patterns: &[r"\b[XYZ]-?[0-9]{7}-?[A-Z]\b"],
        check: Check::EsNie,
        base: 0.8,
        context: &["nie", "extranjero"],
        boost: 0.15,
        negative: false,
    },
    Builtin {
        entity: "ES_DNI",
        // Also with thousands dots, as printed on the card and in many forms (`12.345.678-Z`).
        patterns: &[
            r"\b[0-9]{8}-?[A-Z]\b",
            r"\b[0-9]{2}\.[0-9]{3}\.[0-9]{3}-?[A-Z]\b",
        ],
        check: Check::EsDni,
        base: 0.75,
        context: &["dni", "nif", "documento"],
        boost: 0.2,
        negative: true,
    },
    // ---- network -----------------------------------------------------------------------------
    Builtin {
        entity: "MAC_ADDRESS",
        patterns: &[
            r"\b[0-9A-Fa-f]{2}(?:[:-][0-9A-Fa-f]{2}){5}\b",
            r"\b[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4}\b",
            // Without leading zeros, as BSD and macOS tools print them (`0:1a:2b:3:4d:5e`).
            r"\b[0-9A-Fa-f]{1,2}(?::[0-9A-Fa-f]{1,2}){5}\b",
        ],
        check: Check::Mac,
        base: 0.85,
        context: &["mac", "hwaddr", "ether", "bssid"],
        boost: 0.1,
        negative: false,
    },
    Builtin {
        entity: "IPV6",
        // Eight groups, or `::` with groups on at least one side (never a bare `::`, never a
        // time like `12:54:05`), optionally ending in a dotted quad.
        patterns: &[concat!(
            r"(?:\b[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4}){7}",
            r"|\b[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4}){0,6}::(?:[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4}){0,6})?",
            r"|::[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4}){0,6})",
            r"(?:(?:\.[0-9]{1,3}){3})?",
        )],
        check: Check::Ipv6,
        base: 0.85,
        context: &["ip", "ipv6", "address", "addr", "host"],
        boost: 0.1,
        negative: false,
    },
    Builtin {
        entity: "IPV4",
        patterns: &[r"\b(?:[0-9]{1,3}\.){3}[0-9]{1,3}\b"],
        check: Check::Ipv4,
        base: 0.85,
        context: &[
            "ip", "ipv4", "address", "addr", "host", "client", "server", "from",
        ],
        boost: 0.1,
        negative: true,
    },
    // ---- payment cards -------------------------------------------------------------------------
    Builtin {
        entity: "CARD",
        // (Grouped by spaces, `-` or `.`: `4111.1111.1111.1111`.)
        patterns: &[r"\b[2-6][0-9](?:[ .-]?[0-9]){11,17}\b"],
        check: Check::Card,
        base: 0.9,
        context: &[
            "card",
            "visa",
            "mastercard",
            "amex",
            "karte",
            "carte",
            "tarjeta",
            "carta",
            "kaart",
            "karta",
            "kort",
        ],
        boost: 0.1,
        negative: false,
    },
    // ---- national ids ---------------------------------------------------------------------------
    Builtin {
        entity: "FR_NIR",
        patterns: &[
            r"\b[12378] ?[0-9]{2} ?(?:0[1-9]|1[0-2]|[2-9][0-9]) ?(?:[0-9]{2}|2[AB]) ?[0-9]{3} ?[0-9]{3} ?[0-9]{2}\b",
        ],
        check: Check::FrNir,
        base: 0.7,
        context: &[
            "sécurité sociale",
            "securite sociale",
            "sécu",
            "nir",
            "insee",
            "numéro de sécurité sociale",
        ],
        boost: 0.25,
        negative: true,
    },
    Builtin {
        entity: "US_SSN",
        patterns: &[
            r"\b[0-9]{3}-[0-9]{2}-[0-9]{4}\b",
            r"\b[0-9]{3} [0-9]{2} [0-9]{4}\b",
            r"\b[0-9]{9}\b",
        ],
        check: Check::Ssn,
        base: 0.6,
        context: &["ssn", "social security", "soc sec", "social-security"],
        boost: 0.35,
        negative: true,
    },
    Builtin {
        entity: "SE_PERSONNUMMER",
        patterns: &[
            r"\b(?:19|20)?[0-9]{6}[-+][0-9]{4}\b",
            r"\b(?:19|20)?[0-9]{10}\b",
        ],
        check: Check::SePnr,
        base: 0.65,
        context: &[
            "personnummer",
            "personnr",
            "pnr",
            "person number",
            "personal number",
            "samordningsnummer",
        ],
        boost: 0.3,
        negative: true,
    },
    Builtin {
        entity: "DOB",
        patterns: &[
            // Year first, also as an ISO 8601 date and time at midnight in some time zone
            // (`1985-03-03T00:00:00Z`, how JSON APIs serialise a date; `1985-03-02T23:00:00Z`,
            // a date picked at midnight in Paris and stored in UTC; every offset is a multiple
            // of 15 minutes, and the seconds are zero: written out, so that `T10:15` before
            // `:37` is not a candidate). Other times are timestamps, everywhere in tool
            // results, and as candidates would cost the sparse path a quarter of its speed
            // (measured: a sixth for those at a quarter hour). Or with slashes or dots
            // (`1985/03/03`).
            concat!(
                r"\b(?:19|20)[0-9]{2}(?:-[01]?[0-9]-[0-3]?[0-9]",
                r"(?:T(?:00:00(?::00)?|(?:[01][0-9]|2[0-3]):(?:00|15|30|45):00)(?:\.0{1,9})?",
                r"(?:Z|[+-][0-2][0-9]:?[0-5][0-9])?)?",
                r"|/[01]?[0-9]/[0-3]?[0-9]|\.[01]?[0-9]\.[0-3]?[0-9])\b",
            ),
            r"\b[0-3]?[0-9][./-][0-3]?[0-9][./-](?:19|20)?[0-9]{2}\b",
            r"\b[0-3]?[0-9](?:\.|er|st|nd|rd|th)?(?: de)? MONTHS\.?(?: de)?,? (?:19|20)[0-9]{2}\b",
            r"\bMONTHS_EN\.? [0-3]?[0-9](?:st|nd|rd|th)?,? (?:19|20)[0-9]{2}\b",
            // `03-Mar-1985` (database exports, forms).
            r"\b[0-3]?[0-9]-MONTHS-(?:19|20)[0-9]{2}\b",
        ],
        check: Check::Dob,
        base: 0.1,
        context: DOB_WORDS,
        boost: 0.8,
        negative: false,
    },
    Builtin {
        entity: "PHONE",
        patterns: &[
            // (Also with the `+` percent-encoded, as in links: `?phone=%2B4930123456`.)
            r"(?:\+|%2[Bb]|\b00)[1-9][0-9]{0,2}(?:[ .-]?\(0\))?(?:[ .-]?\(?[0-9]{1,5}\)?){1,6}\b",
            // NANP, also with the trunk prefix (`1-800-555-0199`).
            r"(?:\b1[ .-])?(?:\b[2-9][0-9]{2}|\([2-9][0-9]{2}\))[ .-]?[2-9][0-9]{2}[ .-][0-9]{4}\b",
            r"(?:\b0|\(0)[1-9][0-9]{0,4}\)?(?:[ ./-]?[0-9]{2,8}){1,4}\b",
            // Groups of two or three, the last up to four (`612 345 678`, `347 123 4567`),
            // also joined by `-` (`601-234-567`, Polish mobiles).
            r"\b[1-9][0-9]{1,2}(?:[ -][0-9]{2,3}){1,2}[ -][0-9]{2,4}\b",
            // Italian mobiles as they are usually written (`333 1234567`).
            r"\b3[0-9]{2}[ .-][0-9]{6,7}\b",
            // In links that name it as one, in E.164 without its `+`: WhatsApp's
            // (`wa.me/4915112345678`, `send?phone=4915112345678`) and query parameters
            // (`?tel=...`, `&msisdn=...`). A `+`, encoded or not, is the first pattern's.
            // (Not after a name in any text, `"phone":"4915112345678"` in JSON carried in a
            // string: a pattern starting at such names took dense text through the agent
            // from 46 to 16 MB/s, measured by `benches/redact.rs`.)
            r"(?:\bwa\.me/|[?&;](?i:phone|phone_?number|tel|mobile|msisdn)=)[0-9]{7,15}\b",
        ],
        check: Check::Phone,
        base: 0.8,
        context: PHONE_WORDS,
        boost: 0.3,
        negative: true,
    },
    Builtin {
        entity: "NL_BSN",
        // Also in groups of three (`111 222 333`), as often typed.
        patterns: &[
            r"\b[0-9]{4}\.[0-9]{2}\.[0-9]{3}\b",
            r"\b[0-9]{9}\b",
            r"\b[0-9]{3} [0-9]{3} [0-9]{3}\b",
        ],
        check: Check::NlBsn,
        base: 0.35,
        context: &[
            "bsn",
            "burgerservicenummer",
            "sofinummer",
            "sofi",
            "citizen service number",
        ],
        boost: 0.55,
        negative: true,
    },
    Builtin {
        entity: "PL_PESEL",
        patterns: &[r"\b[0-9]{11}\b"],
        check: Check::PlPesel,
        base: 0.4,
        context: &["pesel"],
        boost: 0.55,
        negative: true,
    },
    Builtin {
        entity: "DE_TAX_ID",
        patterns: &[r"\b[0-9]{2} [0-9]{3} [0-9]{3} [0-9]{3}\b", r"\b[0-9]{11}\b"],
        check: Check::DeTaxId,
        base: 0.4,
        context: &[
            "steuer",
            "steuer-id",
            "steuerid",
            "steuer-idnr",
            "steueridentifikationsnummer",
            "idnr",
            "identifikationsnummer",
            "tax id",
            "tin",
        ],
        boost: 0.55,
        negative: true,
    },
    Builtin {
        entity: "PASSPORT",
        patterns: &[
            r"\b[A-Z]{1,3}[0-9]{6,8}\b",
            r"\b[0-9]{2}[A-Z]{2}[0-9]{5}\b",
            r"\b[CFGHJKLMNPRTVWXYZ][CFGHJKLMNPRTVWXYZ0-9]{8}\b",
            r"\b[0-9]{9}\b",
        ],
        check: Check::Passport,
        base: 0.1,
        context: PASSPORT_WORDS,
        boost: 0.8,
        negative: true,
    },
    Builtin {
        entity: "BIC",
        patterns: &[r"\b[A-Z]{4}[A-Z]{2}[A-Z0-9]{2}(?:[A-Z0-9]{3})?\b"],
        check: Check::Bic,
        base: 0.3,
        context: &["bic", "swift", "bic/swift", "swift/bic", "bank"],
        boost: 0.6,
        negative: false,
    },
];

/// The month-name placeholders used in the date patterns.
pub(crate) fn expand(pattern: &str) -> String {
    pattern
        .replace("MONTHS_EN", MONTHS_EN)
        .replace("MONTHS", MONTHS)
}
