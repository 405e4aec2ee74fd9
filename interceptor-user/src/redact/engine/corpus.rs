//! Deterministic generator of the labelled redaction corpus (`tests/redaction/corpus.jsonl`
//! at the workspace root): every entity type in prose, JSON, CSV and JSONL, formatted the
//! EN/DE/FR/ES/IT/NL/PL/SE ways, plus hard negatives that must not be masked; and API-style
//! JSON records (`json_keys`) in which only the key says what a value is.
//!
//! Regenerate with `REDACTION_CORPUS_WRITE=1 cargo test -p interceptor-user --lib
//! redact::engine::tests::corpus_is_current`; the test fails when the committed file differs
//! from what this generator produces.

use serde::{Deserialize, Serialize};

use super::validate::checks;

pub const SEED: u64 = 0x1D5E_C0DE_2024_0001;
pub const LANGS: &[&str] = &["en", "de", "fr", "es", "it", "nl", "pl", "se"];
const DOCS_PER_LANG_AND_FORMAT: usize = 12;

/// A labelled byte range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    /// Entity type (positives) or kind of hard negative.
    pub label: String,
    pub start: usize,
    pub end: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Doc {
    pub id: String,
    pub format: String,
    pub lang: String,
    pub text: String,
    /// Values that must be masked.
    pub pii: Vec<Span>,
    /// Hard negatives: values that must not be masked.
    pub negatives: Vec<Span>,
}

pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    pub fn range(&mut self, lo: u32, hi: u32) -> u32 {
        lo + self.below((hi - lo + 1) as usize) as u32
    }
    pub fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next() % 10_000) as f64 / 10_000.0 < p
    }
    fn digits(&mut self, n: usize) -> Vec<u32> {
        (0..n).map(|_| self.range(0, 9)).collect()
    }
    fn chars(&mut self, n: usize, alphabet: &str) -> String {
        let a = alphabet.as_bytes();
        (0..n).map(|_| a[self.below(a.len())] as char).collect()
    }
}

fn ds(v: &[u32]) -> String {
    v.iter()
        .map(|d| char::from_digit(*d, 10).unwrap_or('0'))
        .collect()
}

const UPPER: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ";
const ALNUM: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const B64: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const B64URL: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
const HEX: &str = "0123456789abcdef";

fn group(s: &str, sizes: &[usize], sep: &str) -> String {
    let mut out = String::new();
    let mut i = 0;
    for (k, &n) in sizes.iter().enumerate() {
        if i >= s.len() {
            break;
        }
        if k > 0 {
            out.push_str(sep);
        }
        let j = (i + n).min(s.len());
        out.push_str(&s[i..j]);
        i = j;
    }
    if i < s.len() {
        out.push_str(sep);
        out.push_str(&s[i..]);
    }
    out
}

fn group4(s: &str) -> String {
    group(s, &[4; 9], " ")
}

// ---- values --------------------------------------------------------------------------------

fn email(r: &mut Rng, lang: &str) -> String {
    let names: &[&str] = match lang {
        "de" => &["max.mueller", "anna.schmidt", "lukas.weber", "j.fischer"],
        "fr" => &["jean.dupont", "marie.martin", "luc.bernard", "c.petit"],
        "es" => &[
            "jose.garcia",
            "lucia.fernandez",
            "carlos.lopez",
            "m.sanchez",
        ],
        "it" => &["mario.rossi", "giulia.bianchi", "luca.romano", "f.ricci"],
        "nl" => &["jan.devries", "sanne.jansen", "pieter.bakker", "l.visser"],
        "pl" => &["jan.kowalski", "anna.nowak", "piotr.wisniewski", "k.wojcik"],
        "se" => &[
            "erik.andersson",
            "anna.johansson",
            "lars.karlsson",
            "s.nilsson",
        ],
        _ => &["john.smith", "emma.jones", "oliver.brown", "j_doe"],
    };
    let domains = [
        "mail.example-corp.com",
        "dept.uni-example.edu",
        "example.com",
        "mail.de",
        "exemple.fr",
        "correo.es",
        "posta.it",
        "voorbeeld.nl",
        "poczta.pl",
        "post.se",
        "company.co.uk",
        "corp.example.org",
    ];
    let mut local = r.pick(names).to_string();
    if r.chance(0.3) {
        local.push_str(&r.range(1, 99).to_string());
    }
    if r.chance(0.15) {
        local.push_str("+news");
    }
    let mut e = format!("{local}@{}", r.pick(&domains));
    if r.chance(0.1) {
        e = e.to_uppercase();
    }
    e
}

fn nanp(r: &mut Rng) -> (u32, u32, u32) {
    loop {
        let a = r.range(201, 989);
        let x = r.range(201, 989);
        if a % 100 != 11 && x % 100 != 11 {
            return (a, x, r.range(0, 9999));
        }
    }
}

/// A phone number; `true` when it needs a phone word before it (no trunk prefix).
fn phone(r: &mut Rng, lang: &str) -> (String, bool) {
    let d = |r: &mut Rng, n| ds(&r.digits(n));
    if r.chance(0.2) {
        // Less common but real international writings.
        let v = match r.below(5) {
            0 => format!("+49-30-{}", d(r, 7)),
            1 => format!("0049 30 {}", d(r, 7)),
            2 => format!("+44 (0)20 {} {}", d(r, 4), d(r, 4)),
            3 => format!("+33 (0)1 {} {} {} {}", d(r, 2), d(r, 2), d(r, 2), d(r, 2)),
            _ => {
                let (a, x, l) = nanp(r);
                format!("+1.{a}.{x}.{l:04}")
            }
        };
        return (v, false);
    }
    let v = match (lang, r.below(4)) {
        ("en", 0) => {
            let (a, x, l) = nanp(r);
            format!("({a}) {x}-{l:04}")
        }
        ("en", 1) => {
            let (a, x, l) = nanp(r);
            format!("+1 {a}-{x}-{l:04}")
        }
        ("en", 2) => format!("+44 20 {} {}", d(r, 4), d(r, 4)),
        ("en", _) => format!("07{} {}", d(r, 3), d(r, 6)),
        ("de", 0) => format!("+49 30 {}", d(r, 7)),
        ("de", 1) => format!("0{} {}", r.range(151, 179), d(r, 8)),
        ("de", 2) => format!("+49 (0)89 {}", d(r, 6)),
        ("de", _) => format!("0{}/{}", r.range(201, 989), d(r, 6)),
        ("fr", 0) => format!(
            "+33 {} {} {} {} {}",
            r.range(1, 9),
            d(r, 2),
            d(r, 2),
            d(r, 2),
            d(r, 2)
        ),
        ("fr", 1) => format!(
            "0{} {} {} {} {}",
            r.range(6, 7),
            d(r, 2),
            d(r, 2),
            d(r, 2),
            d(r, 2)
        ),
        ("fr", 2) => format!("01.{}.{}.{}.{}", d(r, 2), d(r, 2), d(r, 2), d(r, 2)),
        ("fr", _) => format!("+33 6 {} {} {} {}", d(r, 2), d(r, 2), d(r, 2), d(r, 2)),
        ("es", 0) => format!("+34 6{} {} {} {}", d(r, 2), d(r, 2), d(r, 2), d(r, 2)),
        ("es", 1) => format!("+34 91{} {} {}", d(r, 1), d(r, 3), d(r, 3)),
        ("es", _) => return (format!("6{} {} {}", d(r, 2), d(r, 3), d(r, 3)), true),
        ("it", 0) => format!("+39 3{} {}", d(r, 2), d(r, 7)),
        ("it", 1) => format!("02 {} {}", d(r, 4), d(r, 4)),
        ("it", _) => format!("+39 06 {} {}", d(r, 4), d(r, 4)),
        ("nl", 0) => format!("+31 6 {}", d(r, 8)),
        ("nl", 1) => format!("06-{}", d(r, 8)),
        ("nl", _) => format!("020 {} {}", d(r, 3), d(r, 4)),
        ("pl", 0) => format!("+48 5{} {} {}", d(r, 2), d(r, 3), d(r, 3)),
        ("pl", 1) => format!("+48 22 {} {} {}", d(r, 3), d(r, 2), d(r, 2)),
        ("pl", _) => return (format!("5{} {} {}", d(r, 2), d(r, 3), d(r, 3)), true),
        ("se", 0) => format!("+46 8 {} {} {}", d(r, 3), d(r, 3), d(r, 2)),
        ("se", 1) => format!("08-{} {} {}", d(r, 3), d(r, 3), d(r, 2)),
        ("se", _) => format!("070-{} {} {}", d(r, 3), d(r, 2), d(r, 2)),
        _ => format!("+1 202 555 {}", d(r, 4)),
    };
    (v, false)
}

pub fn card(r: &mut Rng) -> String {
    let (prefix, len): (Vec<u32>, usize) = match r.below(4) {
        0 => (vec![4], 16),
        1 => (vec![5, r.range(1, 5)], 16),
        2 => (vec![3, if r.chance(0.5) { 4 } else { 7 }], 15),
        _ => (vec![6, 0, 1, 1], 16),
    };
    let mut v = prefix;
    while v.len() < len - 1 {
        v.push(r.range(0, 9));
    }
    v.push(checks::luhn_complete(&v));
    let s = ds(&v);
    match (len, r.below(3)) {
        (15, 0) => group(&s, &[4, 6, 5], " "),
        (_, 0) => group4(&s),
        (15, 1) => group(&s, &[4, 6, 5], "-"),
        (_, 1) => group(&s, &[4, 4, 4, 4], "-"),
        _ => s,
    }
}

fn card_bad_luhn(r: &mut Rng) -> String {
    let mut v = vec![4];
    while v.len() < 15 {
        v.push(r.range(0, 9));
    }
    let good = checks::luhn_complete(&v);
    v.push((good + r.range(1, 9)) % 10);
    let s = ds(&v);
    if r.chance(0.5) { group4(&s) } else { s }
}

fn iban_country(lang: &str) -> &'static str {
    match lang {
        "de" => "DE",
        "fr" => "FR",
        "es" => "ES",
        "it" => "IT",
        "nl" => "NL",
        "pl" => "PL",
        "se" => "SE",
        _ => "GB",
    }
}

pub fn iban(r: &mut Rng, country: &str, bad: bool) -> String {
    let d = |r: &mut Rng, n| ds(&r.digits(n));
    let bban = match country {
        "DE" => d(r, 18),
        "FR" => d(r, 23),
        "ES" => d(r, 20),
        "IT" => format!("{}{}", r.chars(1, UPPER), d(r, 22)),
        "NL" => format!("{}{}", r.chars(4, UPPER), d(r, 10)),
        "PL" => d(r, 24),
        "SE" => d(r, 20),
        "BE" => d(r, 12),
        _ => format!("{}{}", r.chars(4, UPPER), d(r, 14)),
    };
    let mut check = checks::iban_check(country, &bban);
    if bad {
        let c: u32 = check.parse().unwrap_or(0);
        check = format!("{:02}", (c + r.range(1, 50)) % 97 + 2);
        if checks::is_iban(&format!("{country}{check}{bban}")) {
            check = format!("{:02}", (c + 1) % 97 + 2);
        }
    }
    let s = format!("{country}{check}{bban}");
    match r.below(8) {
        0..=2 => group4(&s),
        // Typed by hand, in small letters.
        3 => group4(&s).to_lowercase(),
        _ => s,
    }
}

fn bic(r: &mut Rng, lang: &str) -> String {
    let loc = format!(
        "{}{}",
        r.chars(1, UPPER),
        r.chars(1, "ABCDEFGHJKLMNPQRSTUVWXYZ123456789")
    );
    let branch = if r.chance(0.4) { "XXX" } else { "" };
    format!("{}{}{loc}{branch}", r.chars(4, UPPER), iban_country(lang))
}

fn ipv4(r: &mut Rng) -> String {
    let a = loop {
        let a = r.range(1, 223);
        if a != 127 {
            break a;
        }
    };
    format!(
        "{a}.{}.{}.{}",
        r.range(0, 255),
        r.range(0, 255),
        r.range(1, 254)
    )
}

fn ipv6(r: &mut Rng) -> String {
    let g = |r: &mut Rng| format!("{:x}", r.range(1, 0xffff));
    match r.below(3) {
        0 => format!("2001:db8:{}:{}::{}", g(r), g(r), g(r)),
        1 => (0..8).map(|_| g(r)).collect::<Vec<_>>().join(":"),
        _ => format!("fe80::{}:{}:{}:{}", g(r), g(r), g(r), g(r)),
    }
}

fn mac(r: &mut Rng) -> String {
    let bytes: Vec<u32> = (0..6)
        .map(|i| {
            if i == 0 {
                r.range(1, 254) & 0xfe
            } else {
                r.range(0, 255)
            }
        })
        .collect();
    let short = bytes.iter().filter(|&&b| b < 16).count() <= 2;
    match r.below(5) {
        // As BSD and macOS tools print them, without leading zeros.
        4 if short => bytes
            .iter()
            .map(|b| format!("{b:x}"))
            .collect::<Vec<_>>()
            .join(":"),
        0 | 4 => bytes
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":"),
        1 => bytes
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":"),
        2 => bytes
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join("-"),
        _ => format!(
            "{:02x}{:02x}.{:02x}{:02x}.{:02x}{:02x}",
            bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5]
        ),
    }
}

const MONTHS: &[(&str, [&str; 12])] = &[
    (
        "en",
        [
            "January",
            "February",
            "March",
            "April",
            "May",
            "June",
            "July",
            "August",
            "September",
            "October",
            "November",
            "December",
        ],
    ),
    (
        "de",
        [
            "Januar",
            "Februar",
            "März",
            "April",
            "Mai",
            "Juni",
            "Juli",
            "August",
            "September",
            "Oktober",
            "November",
            "Dezember",
        ],
    ),
    (
        "fr",
        [
            "janvier",
            "février",
            "mars",
            "avril",
            "mai",
            "juin",
            "juillet",
            "août",
            "septembre",
            "octobre",
            "novembre",
            "décembre",
        ],
    ),
    (
        "es",
        [
            "enero",
            "febrero",
            "marzo",
            "abril",
            "mayo",
            "junio",
            "julio",
            "agosto",
            "septiembre",
            "octubre",
            "noviembre",
            "diciembre",
        ],
    ),
    (
        "it",
        [
            "gennaio",
            "febbraio",
            "marzo",
            "aprile",
            "maggio",
            "giugno",
            "luglio",
            "agosto",
            "settembre",
            "ottobre",
            "novembre",
            "dicembre",
        ],
    ),
    (
        "nl",
        [
            "januari",
            "februari",
            "maart",
            "april",
            "mei",
            "juni",
            "juli",
            "augustus",
            "september",
            "oktober",
            "november",
            "december",
        ],
    ),
    (
        "pl",
        [
            "stycznia",
            "lutego",
            "marca",
            "kwietnia",
            "maja",
            "czerwca",
            "lipca",
            "sierpnia",
            "września",
            "października",
            "listopada",
            "grudnia",
        ],
    ),
    (
        "se",
        [
            "januari",
            "februari",
            "mars",
            "april",
            "maj",
            "juni",
            "juli",
            "augusti",
            "september",
            "oktober",
            "november",
            "december",
        ],
    ),
];

fn month_name(lang: &str, m: u32) -> &'static str {
    MONTHS
        .iter()
        .find(|(l, _)| *l == lang)
        .map_or("March", |(_, n)| n[(m - 1) as usize])
}

fn date(r: &mut Rng, from: u32, to: u32) -> (u32, u32, u32) {
    (r.range(from, to), r.range(1, 12), r.range(1, 28))
}

fn dob(r: &mut Rng, lang: &str) -> String {
    let (y, m, d) = date(r, 1940, 2005);
    let named = r.chance(0.4);
    match lang {
        "en" if named => format!("{} {d}, {y}", month_name(lang, m)),
        "en" => {
            if r.chance(0.5) {
                format!("{m:02}/{d:02}/{y}")
            } else {
                format!("{y}-{m:02}-{d:02}")
            }
        }
        "de" if named => format!("{d}. {} {y}", month_name(lang, m)),
        "de" | "pl" => format!("{d:02}.{m:02}.{y}"),
        "es" if named => format!("{d} de {} de {y}", month_name(lang, m)),
        "nl" if !named => format!("{d:02}-{m:02}-{y}"),
        "se" if !named => format!("{y}-{m:02}-{d:02}"),
        _ if named => format!("{d} {} {y}", month_name(lang, m)),
        _ => format!("{d:02}/{m:02}/{y}"),
    }
}

fn ssn(r: &mut Rng) -> String {
    let area = loop {
        let a = r.range(1, 899);
        if a != 666 {
            break a;
        }
    };
    format!("{area:03}-{:02}-{:04}", r.range(1, 99), r.range(1, 9999))
}

fn nino(r: &mut Rng) -> String {
    let p = loop {
        let a = r.chars(1, "ABCEGHJKLMNOPRSTWXYZ");
        let b = r.chars(1, "ABCEGHJKLMNPRSTWXYZ");
        let p = format!("{a}{b}");
        if !["BG", "GB", "KN", "NK", "NT", "TN", "ZZ"].contains(&p.as_str()) {
            break p;
        }
    };
    let n = ds(&r.digits(6));
    let s = r.chars(1, "ABCD");
    if r.chance(0.5) {
        format!("{p} {} {} {} {s}", &n[0..2], &n[2..4], &n[4..6])
    } else {
        format!("{p}{n}{s}")
    }
}

fn de_tax_id(r: &mut Rng) -> String {
    loop {
        let missing = r.range(0, 9);
        let mut digits: Vec<u32> = (0..10).filter(|&d| d != missing).collect();
        let dup = digits[r.below(9)];
        digits.push(dup);
        for i in (1..digits.len()).rev() {
            let j = r.below(i + 1);
            digits.swap(i, j);
        }
        if digits[0] == 0 {
            continue;
        }
        digits.push(checks::de_tax_check(&digits));
        if checks::is_de_tax(&digits) {
            let s = ds(&digits);
            return if r.chance(0.4) {
                format!("{} {} {} {}", &s[0..2], &s[2..5], &s[5..8], &s[8..11])
            } else {
                s
            };
        }
    }
}

fn nir(r: &mut Rng) -> String {
    let (y, m, _) = date(r, 1940, 2005);
    let sex = r.range(1, 2);
    let dept = r.range(1, 95);
    let (commune, order) = (r.range(1, 999), r.range(1, 999));
    let first13: u64 = format!("{sex}{:02}{m:02}{dept:02}{commune:03}{order:03}", y % 100)
        .parse()
        .unwrap_or(0);
    let key = checks::nir_key(first13);
    let s = format!("{first13:013}{key:02}");
    if r.chance(0.5) {
        format!(
            "{} {} {} {} {} {} {}",
            &s[0..1],
            &s[1..3],
            &s[3..5],
            &s[5..7],
            &s[7..10],
            &s[10..13],
            &s[13..15]
        )
    } else {
        s
    }
}

fn codice_fiscale(r: &mut Rng) -> String {
    let (y, m, d) = date(r, 1940, 2005);
    let day = if r.chance(0.5) { d + 40 } else { d };
    let ml = b"ABCDEHLMPRST"[(m - 1) as usize] as char;
    let body = format!(
        "{}{:02}{ml}{day:02}{}{:03}",
        r.chars(6, "BCDFGLMNPRSTVZ"),
        y % 100,
        r.chars(1, "ADFGHL"),
        r.range(1, 999)
    );
    let c = checks::cf_check(body.as_bytes()) as char;
    format!("{body}{c}")
}

fn dni(r: &mut Rng) -> String {
    let n = r.range(10_000_000, 99_999_999);
    let letter = checks::dni(n);
    if r.chance(0.2) {
        // With thousands dots, as on the card.
        format!(
            "{}.{:03}.{:03}-{letter}",
            n / 1_000_000,
            n / 1000 % 1000,
            n % 1000
        )
    } else {
        format!("{n:08}{letter}")
    }
}

fn nie(r: &mut Rng) -> String {
    let lead = r.range(0, 2);
    let n = r.range(0, 9_999_999);
    format!(
        "{}{n:07}{}",
        ["X", "Y", "Z"][lead as usize],
        checks::dni(lead * 10_000_000 + n)
    )
}

fn bsn(r: &mut Rng) -> String {
    loop {
        let mut v = r.digits(8);
        v[0] = r.range(1, 9);
        for last in 0..10 {
            let mut w = v.clone();
            w.push(last);
            if checks::bsn_ok(&w) {
                let v = ds(&w);
                // In groups of three, as often typed.
                return if r.chance(0.2) {
                    format!("{} {} {}", &v[..3], &v[3..6], &v[6..])
                } else {
                    v
                };
            }
        }
    }
}

fn pesel(r: &mut Rng) -> String {
    let (y, m, d) = date(r, 1940, 2015);
    let mm = if y >= 2000 { m + 20 } else { m };
    let mut v: Vec<u32> = format!("{:02}{mm:02}{d:02}", y % 100)
        .chars()
        .filter_map(|c| c.to_digit(10))
        .collect();
    v.extend(r.digits(4));
    v.push(checks::pesel_check(&v));
    ds(&v)
}

fn personnummer(r: &mut Rng) -> String {
    let (y, m, d) = date(r, 1940, 2005);
    let mut v: Vec<u32> = format!("{:02}{m:02}{d:02}", y % 100)
        .chars()
        .filter_map(|c| c.to_digit(10))
        .collect();
    v.extend(r.digits(3));
    v.push(checks::luhn_complete(&v));
    let s = ds(&v);
    if r.chance(0.3) {
        format!("{y}{}-{}", &s[2..6], &s[6..])
    } else {
        format!("{}-{}", &s[..6], &s[6..])
    }
}

fn passport(r: &mut Rng, lang: &str) -> String {
    let d = |r: &mut Rng, n| ds(&r.digits(n));
    match lang {
        "en" => d(r, 9),
        "de" => format!(
            "{}{}{}",
            r.chars(1, "CFGHJK"),
            d(r, 2),
            r.chars(6, "CFGHJKLMNPRTVWXYZ0123456789")
        ),
        "fr" => format!("{}{}{}", d(r, 2), r.chars(2, UPPER), d(r, 5)),
        "es" => format!("{}{}", r.chars(3, UPPER), d(r, 6)),
        "it" | "pl" | "nl" => format!("{}{}", r.chars(2, UPPER), d(r, 7)),
        _ => format!("{}{}", r.chars(2, UPPER), d(r, 7)),
    }
}

fn pem(r: &mut Rng) -> String {
    let kind = r.pick(&["RSA ", "EC ", "", "OPENSSH "]);
    let mut s = format!("-----BEGIN {kind}PRIVATE KEY-----\n");
    for _ in 0..r.range(3, 6) {
        s.push_str(&r.chars(64, B64));
        s.push('\n');
    }
    let tail = r.range(8, 60) as usize;
    s.push_str(&r.chars(tail, B64));
    s.push_str(&format!("==\n-----END {kind}PRIVATE KEY-----"));
    s
}

fn jwt(r: &mut Rng) -> String {
    use base64::Engine as _;
    let b = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b.encode(r.pick(&[
        r#"{"alg":"HS256","typ":"JWT"}"#,
        r#"{"alg":"RS256","kid":"k1"}"#,
    ]));
    let payload = b.encode(format!(
        r#"{{"sub":"{}","name":"user{}","iat":{}}}"#,
        r.range(1000, 99999),
        r.range(1, 999),
        r.range(1_500_000_000, 1_700_000_000)
    ));
    format!("{header}.{payload}.{}", r.chars(43, B64URL))
}

fn secret(r: &mut Rng) -> (&'static str, String) {
    match r.below(6) {
        0 => ("PRIVATE_KEY", pem(r)),
        1 => ("JWT", jwt(r)),
        2 => (
            "AWS_ACCESS_KEY",
            format!("AKIA{}", r.chars(16, "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")),
        ),
        3 => ("GITHUB_TOKEN", format!("ghp_{}", r.chars(36, ALNUM))),
        4 => (
            "SLACK_TOKEN",
            format!(
                "xoxb-{}-{}-{}",
                ds(&r.digits(12)),
                ds(&r.digits(13)),
                r.chars(24, ALNUM)
            ),
        ),
        _ => ("GOOGLE_API_KEY", format!("AIza{}", r.chars(35, B64URL))),
    }
}

// ---- hard negatives ------------------------------------------------------------------------

/// A hard negative: (kind, label before it, value). Without a label (CSV cells, ids in
/// logs), values that are intrinsically ambiguous are not generated: a bare `0612345678`
/// is a Dutch mobile number and a bare `1.2.3.4` an IPv4 address.
fn negative(r: &mut Rng, lang: &str, labelled: bool) -> (&'static str, String, String) {
    let d = |r: &mut Rng, n| ds(&r.digits(n));
    match r.below(16) {
        11 => {
            // ISBN-13 with hyphens (phone-like groups).
            let body = format!("978{}", d(r, 9));
            let sum: u32 = body
                .chars()
                .enumerate()
                .map(|(i, c)| c.to_digit(10).unwrap_or(0) * if i % 2 == 0 { 1 } else { 3 })
                .sum();
            let c = (10 - sum % 10) % 10;
            (
                "isbn",
                "ISBN".into(),
                format!(
                    "{}-{}-{}-{}-{c}",
                    &body[..3],
                    &body[3..4],
                    &body[4..6],
                    &body[6..]
                ),
            )
        }
        12 => {
            // EAN-13 barcode (13 digits, may start like a card number).
            let body = format!("{}{}", r.pick(&["40", "50", "54", "30"]), d(r, 10));
            let sum: u32 = body
                .chars()
                .enumerate()
                .map(|(i, c)| c.to_digit(10).unwrap_or(0) * if i % 2 == 0 { 1 } else { 3 })
                .sum();
            (
                "ean",
                "EAN".into(),
                format!("{body}{}", (10 - sum % 10) % 10),
            )
        }
        13 => (
            "coordinates",
            "location".into(),
            format!(
                "{}.{}, {}.{}",
                r.range(35, 60),
                d(r, 4),
                r.range(1, 30),
                d(r, 4)
            ),
        ),
        14 => (
            "tracking",
            "shipment".into(),
            format!(
                "1Z{}{}{}",
                r.chars(3, "ABCDEFGHJKLMNPRSTUVWXYZ"),
                r.chars(3, UPPER),
                d(r, 10)
            ),
        ),
        15 => (
            "creditor_ref",
            "Ref".into(),
            format!(
                "RF{:02} {} {} {}",
                r.range(2, 98),
                d(r, 4),
                d(r, 4),
                d(r, 4)
            ),
        ),
        0 => (
            "luhn_invalid_card",
            r.pick(&["Reference", "Ref.", "Tracking", "Ticket"])
                .to_string(),
            card_bad_luhn(r),
        ),
        1 => {
            let label = match lang {
                "de" => r.pick(&["Bestellnummer", "Rechnungsnummer", "Bestellung"]),
                "fr" => r.pick(&["Commande", "Facture", "Commande n°"]),
                "es" => r.pick(&["Pedido", "Factura", "Pedido n.º"]),
                "it" => r.pick(&["Ordine", "Fattura", "Ordine n."]),
                "nl" => r.pick(&["Bestelling", "Factuur", "Bestelling nr."]),
                "pl" => r.pick(&["Zamówienie", "Faktura", "Zamówienie nr"]),
                "se" => r.pick(&["Beställning", "Faktura", "Order"]),
                _ => r.pick(&["Order", "Invoice", "Order #", "Order ID"]),
            };
            let v = match r.below(5) {
                2 if !labelled => d(r, 11),
                0 => format!("#{}", d(r, 8)),
                1 => format!("INV-{}-{}", r.range(2019, 2025), d(r, 6)),
                2 => format!("0{}{}", r.range(1, 9), d(r, 8)),
                3 => d(r, 11),
                _ => d(r, 9),
            };
            ("order_id", label.to_string(), v)
        }
        2 => {
            let (a, b, c, e) = (
                r.range(1, 20),
                r.range(0, 20),
                r.range(0, 99),
                r.range(0, 999),
            );
            match r.below(5) {
                0 if !labelled => ("version", "running".into(), format!("v{a}.{b}.{c}.{e}")),
                0 => (
                    "version",
                    r.pick(&["version", "Version:", "release", "firmware", "build"])
                        .to_string(),
                    format!("{a}.{b}.{c}.{e}"),
                ),
                1 => ("version", "running".into(), format!("v{a}.{b}.{c}.{e}")),
                2 => ("version", "package".into(), format!("{a}.{b}.{c}.{e}-beta")),
                3 => (
                    "version",
                    "OID".into(),
                    format!("1.3.6.1.4.1.{}", r.range(1, 99999)),
                ),
                _ => (
                    "version",
                    "schema".into(),
                    format!("{a}.{b}.{c}.{e}.{}", r.range(0, 9)),
                ),
            }
        }
        3 => {
            let (y, m, dd) = date(r, 2015, 2025);
            let (h, mi, s) = (r.range(0, 23), r.range(0, 59), r.range(0, 59));
            match r.below(5) {
                0 => (
                    "timestamp",
                    "at".into(),
                    format!("{y}-{m:02}-{dd:02}T{h:02}:{mi:02}:{s:02}Z"),
                ),
                1 => (
                    "timestamp",
                    "logged".into(),
                    format!("{y}-{m:02}-{dd:02} {h:02}:{mi:02}:{s:02}"),
                ),
                2 => (
                    "timestamp",
                    "epoch".into(),
                    format!("{}", r.range(1_500_000_000, 1_760_000_000)),
                ),
                3 => (
                    "timestamp",
                    "ts".into(),
                    format!("{}{}", r.range(1_500_000_000, 1_760_000_000), d(r, 3)),
                ),
                _ => (
                    "timestamp",
                    "updated".into(),
                    format!("{dd:02}/{m:02}/{y} {h:02}:{mi:02}"),
                ),
            }
        }
        4 => (
            "uuid",
            "request".into(),
            format!(
                "{}-{}-4{}-a{}-{}",
                r.chars(8, HEX),
                r.chars(4, HEX),
                r.chars(3, HEX),
                r.chars(3, HEX),
                r.chars(12, HEX)
            ),
        ),
        5 => (
            "hash",
            r.pick(&["sha256", "commit", "digest"]).to_string(),
            if r.chance(0.5) {
                r.chars(64, HEX)
            } else {
                r.chars(40, HEX)
            },
        ),
        6 => {
            let a = r.range(1, 9) * 1000;
            match r.below(5) {
                0 => ("range", "codes".into(), format!("{a}-{}", a + 999)),
                1 => (
                    "range",
                    "block".into(),
                    format!("0{}00-0{}99", r.range(1, 9), r.range(1, 9)),
                ),
                2 => (
                    "range",
                    "pages".into(),
                    format!("{}-{}", r.range(100, 199), r.range(200, 299)),
                ),
                3 => (
                    "range",
                    "ports".into(),
                    format!("{}-{}", r.range(8000, 8099), r.range(8100, 8999)),
                ),
                _ => (
                    "range",
                    "years".into(),
                    format!("{}-{}", r.range(2000, 2010), r.range(2011, 2024)),
                ),
            }
        }
        7 => {
            let (y, m, dd) = date(r, 2015, 2025);
            match r.below(3) {
                0 => ("date", "created".into(), format!("{y}-{m:02}-{dd:02}")),
                1 => ("date", "due".into(), format!("{dd:02}.{m:02}.{y}")),
                _ => (
                    "date",
                    "meeting on".into(),
                    format!("{dd} {} {y}", month_name(lang, m)),
                ),
            }
        }
        8 => {
            let c = iban_country(lang);
            ("bad_iban", "IBAN".into(), iban(r, c, true))
        }
        9 => (
            "amount",
            "total".into(),
            format!(
                "{}.{:03}.{:03},{:02}",
                r.range(1, 99),
                r.range(0, 999),
                r.range(0, 999),
                r.range(0, 99)
            ),
        ),
        _ => (
            "table_numbers",
            "|".into(),
            format!("{} | {} | {}", d(r, 3), d(r, 4), d(r, 5)),
        ),
    }
}

// ---- labels --------------------------------------------------------------------------------

fn label(r: &mut Rng, entity: &str, lang: &str) -> String {
    let l: &[&str] = match (entity, lang) {
        ("EMAIL", "de") => &["E-Mail:", "Kontakt:", "schreiben Sie an"],
        ("EMAIL", "fr") => &["Courriel :", "e-mail :", "écrivez à"],
        ("EMAIL", "es") => &["Correo:", "email:", "escriba a"],
        ("EMAIL", "it") => &["Email:", "posta:", "scrivere a"],
        ("EMAIL", "nl") => &["E-mail:", "mail naar"],
        ("EMAIL", "pl") => &["E-mail:", "adres:"],
        ("EMAIL", "se") => &["E-post:", "mejla"],
        ("EMAIL", _) => &["Email:", "contact", "write to"],
        ("PHONE", "de") => &["Tel.:", "Telefon:", "Handy:", "erreichbar unter"],
        ("PHONE", "fr") => &["Tél. :", "téléphone :", "portable :", "appelez le"],
        ("PHONE", "es") => &["Tel.:", "teléfono:", "móvil:"],
        ("PHONE", "it") => &["Tel.:", "telefono:", "cellulare:"],
        ("PHONE", "nl") => &["Tel.:", "telefoon:", "mobiel:"],
        ("PHONE", "pl") => &["tel.", "telefon:", "komórka:"],
        ("PHONE", "se") => &["Tel:", "telefon:", "mobil:"],
        ("PHONE", _) => &["Phone:", "call", "mobile:", "reach me at"],
        ("CARD", _) => &[
            "card",
            "Visa",
            "Karte",
            "carte",
            "tarjeta",
            "paid with",
            "CC:",
        ],
        ("IBAN", _) => &["IBAN:", "IBAN", "account", "Konto:", "rekening"],
        ("BIC", _) => &["BIC:", "SWIFT:", "BIC/SWIFT", "SWIFT code"],
        ("IPV4", _) => &["IP", "from", "client", "host", "address", "src="],
        ("IPV6", _) => &["IPv6", "from", "addr", "host"],
        ("MAC_ADDRESS", _) => &["MAC", "device", "hwaddr", "ether"],
        ("DOB", "de") => &["geboren am", "Geburtsdatum:", "geb."],
        ("DOB", "fr") => &["né le", "née le", "date de naissance :"],
        ("DOB", "es") => &["nacido el", "nacida el", "fecha de nacimiento:"],
        ("DOB", "it") => &["nato il", "nata il", "data di nascita:"],
        ("DOB", "nl") => &["geboren op", "geboortedatum:"],
        ("DOB", "pl") => &["urodzony", "urodzona", "data urodzenia:"],
        ("DOB", "se") => &["född", "födelsedatum:"],
        ("DOB", _) => &["born on", "Date of birth:", "DOB:", "birthday"],
        ("US_SSN", _) => &["SSN:", "social security number", "SSN"],
        ("UK_NINO", _) => &["National Insurance number", "NINO:", "NI number"],
        ("DE_TAX_ID", _) => &["Steuer-ID:", "Steueridentifikationsnummer:", "Steuer-IdNr."],
        ("FR_NIR", _) => &["numéro de sécurité sociale :", "NIR :", "n° INSEE"],
        ("IT_CODICE_FISCALE", _) => &["codice fiscale:", "CF:", "C.F."],
        ("ES_DNI", _) => &["DNI:", "NIF:", "DNI"],
        ("ES_NIE", _) => &["NIE:", "NIE"],
        ("NL_BSN", _) => &["BSN:", "burgerservicenummer", "BSN"],
        ("PL_PESEL", _) => &["PESEL:", "nr PESEL", "PESEL"],
        ("SE_PERSONNUMMER", _) => &["personnummer:", "pnr", "Personnummer"],
        ("PASSPORT", "de") => &["Reisepass:", "Passnummer"],
        ("PASSPORT", "fr") => &["passeport n°", "passeport :"],
        ("PASSPORT", "es") => &["pasaporte:", "pasaporte n.º"],
        ("PASSPORT", "it") => &["passaporto:", "passaporto n."],
        ("PASSPORT", "nl") => &["paspoort:", "paspoortnummer"],
        ("PASSPORT", "pl") => &["paszport:", "nr paszportu"],
        ("PASSPORT", "se") => &["pass:", "passnummer"],
        ("PASSPORT", _) => &["passport number", "Passport No.", "passport"],
        _ => &["token:", "key", "secret", "Authorization: Bearer"],
    };
    r.pick(l).to_string()
}

fn national(lang: &str) -> &'static [&'static str] {
    match lang {
        "en" => &["US_SSN", "UK_NINO"],
        "de" => &["DE_TAX_ID"],
        "fr" => &["FR_NIR"],
        "es" => &["ES_DNI", "ES_NIE"],
        "it" => &["IT_CODICE_FISCALE"],
        "nl" => &["NL_BSN"],
        "pl" => &["PL_PESEL"],
        _ => &["SE_PERSONNUMMER"],
    }
}

pub(crate) const GENERIC: &[&str] = &[
    "EMAIL",
    "PHONE",
    "CARD",
    "IBAN",
    "BIC",
    "IPV4",
    "IPV6",
    "MAC_ADDRESS",
    "DOB",
    "PASSPORT",
    "SECRET",
];

/// A value of `entity` (SECRET picks one kind), its entity type and whether it needs its label.
pub fn value(r: &mut Rng, entity: &str, lang: &str) -> (String, String) {
    let v = match entity {
        "EMAIL" => email(r, lang),
        "PHONE" => phone(r, lang).0,
        "CARD" => card(r),
        "IBAN" => iban(r, iban_country(lang), false),
        "BIC" => bic(r, lang),
        "IPV4" => ipv4(r),
        "IPV6" => ipv6(r),
        "MAC_ADDRESS" => mac(r),
        "DOB" => dob(r, lang),
        "PASSPORT" => passport(r, lang),
        "US_SSN" => ssn(r),
        "UK_NINO" => nino(r),
        "DE_TAX_ID" => de_tax_id(r),
        "FR_NIR" => nir(r),
        "IT_CODICE_FISCALE" => codice_fiscale(r),
        "ES_DNI" => dni(r),
        "ES_NIE" => nie(r),
        "NL_BSN" => bsn(r),
        "PL_PESEL" => pesel(r),
        "SE_PERSONNUMMER" => personnummer(r),
        _ => {
            let (e, v) = secret(r);
            return (e.to_string(), v);
        }
    };
    (entity.to_string(), v)
}

fn filler(r: &mut Rng, lang: &str) -> &'static str {
    let f: &[&str] = match lang {
        "de" => &[
            "Vielen Dank für Ihre Nachricht.",
            "Der Termin wurde verschoben.",
            "Bitte prüfen Sie die Angaben.",
            "Grüße aus München, Jürgen Müller.",
        ],
        "fr" => &[
            "Merci pour votre message.",
            "Le rendez-vous a été déplacé.",
            "Veuillez vérifier les données.",
            "Cordialement, Hélène Dubois.",
        ],
        "es" => &[
            "Gracias por su mensaje.",
            "La cita se ha aplazado.",
            "Por favor, revise los datos.",
            "Saludos, José Núñez.",
        ],
        "it" => &[
            "Grazie per il messaggio.",
            "L'appuntamento è stato spostato.",
            "Si prega di verificare i dati.",
            "Cordiali saluti, Niccolò Rossi.",
        ],
        "nl" => &[
            "Bedankt voor uw bericht.",
            "De afspraak is verplaatst.",
            "Controleer de gegevens.",
            "Groeten, Daniël de Vries.",
        ],
        "pl" => &[
            "Dziękujemy za wiadomość.",
            "Spotkanie zostało przełożone.",
            "Proszę sprawdzić dane.",
            "Pozdrawiam, Łukasz Wiśniewski.",
        ],
        "se" => &[
            "Tack för ditt meddelande.",
            "Mötet har flyttats.",
            "Vänligen kontrollera uppgifterna.",
            "Hälsningar, Åsa Öberg.",
        ],
        _ => &[
            "Thanks for your message.",
            "The meeting was moved to next week.",
            "Please check the details below.",
            "Best regards, the support team.",
        ],
    };
    r.pick::<&'static str>(f)
}

// ---- documents -------------------------------------------------------------------------------

#[derive(Default)]
struct W {
    text: String,
    pii: Vec<Span>,
    negatives: Vec<Span>,
}

fn json_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

impl W {
    fn raw(&mut self, s: &str) {
        self.text.push_str(s);
    }
    fn pii(&mut self, entity: &str, v: &str) {
        let start = self.text.len();
        self.text.push_str(v);
        self.pii.push(Span {
            label: entity.into(),
            start,
            end: self.text.len(),
        });
    }
    fn neg(&mut self, kind: &str, v: &str) {
        let start = self.text.len();
        self.text.push_str(v);
        self.negatives.push(Span {
            label: kind.into(),
            start,
            end: self.text.len(),
        });
    }
    /// Appends another writer's content as the inside of a JSON string.
    fn json_inner(&mut self, other: &W) {
        let base = self.text.len();
        let mut map = Vec::with_capacity(other.text.len() + 1);
        let mut out = String::new();
        for (i, c) in other.text.char_indices() {
            while map.len() < i {
                map.push(out.len());
            }
            map.push(out.len());
            out.push_str(&json_escape(&c.to_string()));
        }
        while map.len() <= other.text.len() {
            map.push(out.len());
        }
        self.text.push_str(&out);
        for s in &other.pii {
            self.pii.push(Span {
                label: s.label.clone(),
                start: base + map[s.start],
                end: base + map[s.end],
            });
        }
        for s in &other.negatives {
            self.negatives.push(Span {
                label: s.label.clone(),
                start: base + map[s.start],
                end: base + map[s.end],
            });
        }
    }
}

fn entity_pool(lang: &str) -> Vec<&'static str> {
    GENERIC.iter().chain(national(lang)).copied().collect()
}

/// One sentence with a labelled value; PHONE without trunk prefix and context-dependent
/// types always get their label.
fn pii_sentence(r: &mut Rng, w: &mut W, entity: &str, lang: &str) {
    let (ent, v) = value(r, entity, lang);
    let l = label(r, if entity == "SECRET" { "SECRET" } else { entity }, lang);
    w.raw(&l);
    w.raw(" ");
    let (pre, post) = match ent.as_str() {
        "EMAIL" if r.chance(0.3) => *r.pick(&[
            ("<", ">"),
            ("(", ")"),
            ("mailto:", ""),
            ("\u{201c}", "\u{201d}"),
        ]),
        "IPV4" if r.chance(0.3) => {
            *r.pick(&[("http://", ":8080/status"), ("ip=", ";"), ("[", "]")])
        }
        "IPV6" if r.chance(0.3) => *r.pick(&[("[", "]:443"), ("http://[", "]/"), ("", "/64")]),
        _ => emphasis(&v),
    };
    w.raw(pre);
    w.pii(&ent, &v);
    w.raw(post);
    w.raw(r.pick::<&str>(&[".", ",", ";", " —", " ok.", "."]));
}

fn neg_sentence(r: &mut Rng, w: &mut W, lang: &str) {
    let (kind, l, v) = negative(r, lang, true);
    w.raw(&l);
    w.raw(" ");
    let (pre, post) = emphasis(&v);
    w.raw(pre);
    w.neg(kind, &v);
    w.raw(post);
    w.raw(".");
}

/// Markdown emphasis around about one value in five (`_v_`, `__v__`, `*v*`), chosen by the
/// value itself so that the random stream, and every value of the corpus, stays as it was.
fn emphasis(v: &str) -> (&'static str, &'static str) {
    let h = v
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    match h % 15 {
        0 => ("_", "_"),
        1 => ("__", "__"),
        2 => ("*", "*"),
        _ => ("", ""),
    }
}

fn prose(r: &mut Rng, lang: &str) -> W {
    let mut w = W::default();
    let pool = entity_pool(lang);
    let n = r.range(6, 10);
    for i in 0..n {
        if i > 0 {
            w.raw(r.pick::<&str>(&[" ", "\n", " ", "\n\n"]));
        }
        match r.below(10) {
            0..=4 => {
                let e = *r.pick(&pool);
                pii_sentence(r, &mut w, e, lang);
            }
            5..=7 => neg_sentence(r, &mut w, lang),
            _ => w.raw(filler(r, lang)),
        }
    }
    w
}

fn json_key(entity: &str, lang: &str) -> &'static str {
    match (entity, lang) {
        ("EMAIL", _) => "email",
        ("PHONE", _) => "phone",
        ("CARD", _) => "card_number",
        ("IBAN", _) => "iban",
        ("BIC", _) => "bic",
        ("IPV4", _) | ("IPV6", _) => "ip",
        ("MAC_ADDRESS", _) => "mac",
        ("DOB", "de") => "geburtsdatum",
        ("DOB", "fr") => "date de naissance",
        ("DOB", _) => "date_of_birth",
        ("PASSPORT", _) => "passport",
        ("US_SSN", _) => "ssn",
        ("UK_NINO", _) => "nino",
        ("DE_TAX_ID", _) => "steuer-id",
        ("FR_NIR", _) => "nir",
        ("IT_CODICE_FISCALE", _) => "codice fiscale",
        ("ES_DNI", _) => "dni",
        ("ES_NIE", _) => "nie",
        ("NL_BSN", _) => "bsn",
        ("PL_PESEL", _) => "pesel",
        ("SE_PERSONNUMMER", _) => "personnummer",
        _ => "token",
    }
}

fn json_doc(r: &mut Rng, lang: &str) -> W {
    let mut w = W::default();
    let pool = entity_pool(lang);
    w.raw("{\"result\": {\"id\": ");
    w.raw(&r.range(1000, 999_999).to_string());
    w.raw(", \"customer\": {");
    let n = r.range(4, 7);
    for i in 0..n {
        if i > 0 {
            w.raw(", ");
        }
        let e = *r.pick(&pool);
        let (ent, v) = value(r, e, lang);
        w.raw(&format!("\"{}\": \"", json_key(e, lang)));
        let mut inner = W::default();
        inner.pii(&ent, &v);
        w.json_inner(&inner);
        w.raw("\"");
    }
    w.raw("}, \"meta\": {");
    for i in 0..r.range(2, 4) {
        if i > 0 {
            w.raw(", ");
        }
        let (kind, l, v) = negative(r, lang, true);
        w.raw(&format!("\"{}\": \"", json_escape(&l.to_lowercase())));
        let mut inner = W::default();
        inner.neg(kind, &v);
        w.json_inner(&inner);
        w.raw("\"");
    }
    w.raw("}, \"notes\": \"");
    let mut notes = W::default();
    let e = *r.pick(&pool);
    pii_sentence(r, &mut notes, e, lang);
    notes.raw(" ");
    notes.raw(filler(r, lang));
    notes.raw(" ");
    neg_sentence(r, &mut notes, lang);
    w.json_inner(&notes);
    w.raw("\", \"ok\": true}}");
    w
}

const CSV_COLUMNS: &[&str] = &[
    "EMAIL",
    "PHONE",
    "IBAN",
    "IPV4",
    "IPV6",
    "MAC_ADDRESS",
    "CARD",
];

fn csv_doc(r: &mut Rng, lang: &str) -> W {
    let mut w = W::default();
    let mut cols: Vec<&str> = Vec::new();
    while cols.len() < 3 {
        let c = *r.pick(CSV_COLUMNS);
        if !cols.contains(&c) {
            cols.push(c);
        }
    }
    w.raw("id,name");
    for c in &cols {
        w.raw(",");
        w.raw(&c.to_lowercase());
    }
    w.raw(",created,ref\n");
    let names = [
        "Anna Müller",
        "José Núñez",
        "Łukasz Wiśniewski",
        "Åsa Öberg",
        "Hélène Dubois",
        "John Smith",
        "Daniël de Vries",
        "Niccolò Rossi",
    ];
    for row in 0..r.range(6, 12) {
        w.raw(&format!("{},{}", row + 1, r.pick(&names)));
        for c in &cols {
            w.raw(",");
            let (ent, mut v) = value(r, c, lang);
            if *c == "PHONE" {
                // Numbers without trunk prefix need a phone word: not in a CSV cell.
                while phone_needs_context(&v) {
                    v = value(r, c, lang).1;
                }
            }
            w.pii(&ent, &v);
        }
        w.raw(",");
        let (kind, _, v) = negative(r, lang, false);
        if v.contains(',') || v.contains('|') {
            w.raw("\"");
            w.neg(kind, &v);
            w.raw("\"");
        } else {
            w.neg(kind, &v);
        }
        w.raw(",");
        let (kind, _, v) = negative(r, lang, false);
        if v.contains(',') || v.contains('|') {
            w.raw("\"");
            w.neg(kind, &v);
            w.raw("\"");
        } else {
            w.neg(kind, &v);
        }
        w.raw("\n");
    }
    w
}

fn phone_needs_context(v: &str) -> bool {
    !(v.starts_with('+') || v.starts_with('0') || v.starts_with('('))
}

fn jsonl_doc(r: &mut Rng, lang: &str) -> W {
    let mut w = W::default();
    let pool = entity_pool(lang);
    for _ in 0..r.range(5, 10) {
        let (y, m, d) = date(r, 2023, 2025);
        w.raw("{\"ts\": \"");
        w.neg(
            "timestamp",
            &format!(
                "{y}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
                r.range(0, 23),
                r.range(0, 59),
                r.range(0, 59),
                r.range(0, 999)
            ),
        );
        w.raw(&format!(
            "\", \"level\": \"{}\", \"user\": \"",
            r.pick(&["info", "warn", "debug"])
        ));
        let mut u = W::default();
        u.pii("EMAIL", &email(r, lang));
        w.json_inner(&u);
        w.raw("\", \"src_ip\": \"");
        let mut ip = W::default();
        if r.chance(0.7) {
            ip.pii("IPV4", &ipv4(r))
        } else {
            ip.pii("IPV6", &ipv6(r))
        }
        w.json_inner(&ip);
        w.raw("\", \"request_id\": \"");
        let mut q = W::default();
        let (kind, _, v) = negative(r, lang, false);
        q.neg(kind, &v);
        w.json_inner(&q);
        w.raw("\", \"msg\": \"");
        let mut msg = W::default();
        let e = *r.pick(&pool);
        pii_sentence(r, &mut msg, e, lang);
        w.json_inner(&msg);
        w.raw("\"}\n");
    }
    w
}

// ---- JSON records whose keys are the only labels ------------------------------------------

/// What an API would call a field holding `entity`, in a few spellings (snake_case,
/// camelCase, upper case, the language's words).
fn field_key(r: &mut Rng, entity: &str, lang: &str) -> &'static str {
    let k: &[&str] = match (entity, lang) {
        ("DOB", "de") => &["geburtsdatum", "geburtsDatum", "geb_datum"],
        ("DOB", "fr") => &["date_naissance", "dateDeNaissance", "date_de_naissance"],
        ("DOB", "es") => &["fecha_nacimiento", "fechaNacimiento"],
        ("DOB", "it") => &["data_nascita", "dataDiNascita"],
        ("DOB", "nl") => &["geboortedatum", "geboorteDatum"],
        ("DOB", "pl") => &["data_urodzenia", "dataUrodzenia"],
        ("DOB", "se") => &["fodelsedatum", "födelsedatum"],
        ("DOB", _) => &[
            "date_of_birth",
            "dateOfBirth",
            "birthDate",
            "birth_date",
            "dob",
            "DOB",
            "birthday",
        ],
        ("PASSPORT", "de") => &["reisepass", "passnummer", "reisepassNummer"],
        ("PASSPORT", "fr") => &["passeport", "numero_passeport", "numeroPasseport"],
        ("PASSPORT", "es") => &["pasaporte", "numero_pasaporte"],
        ("PASSPORT", "it") => &["passaporto", "numero_passaporto"],
        ("PASSPORT", "nl") => &["paspoort", "paspoortnummer"],
        ("PASSPORT", "pl") => &["paszport", "nr_paszportu"],
        ("PASSPORT", "se") => &["pass", "passnummer"],
        ("PASSPORT", _) => &[
            "passport",
            "passport_no",
            "passportNumber",
            "passport_number",
        ],
        ("BIC", _) => &["bic", "swift", "swift_code", "bicCode", "BIC"],
        ("NL_BSN", _) => &["bsn", "burgerservicenummer", "bsnNummer", "BSN"],
        ("PL_PESEL", _) => &["pesel", "nr_pesel", "peselNumber", "PESEL"],
        ("DE_TAX_ID", _) => &[
            "steuer_id",
            "steuerId",
            "steuer-id",
            "tax_id",
            "taxId",
            "idnr",
        ],
        ("SE_PERSONNUMMER", _) => &["personnummer", "personNummer", "pnr"],
        ("US_SSN", _) => &[
            "ssn",
            "social_security_number",
            "socialSecurityNumber",
            "SSN",
        ],
        ("UK_NINO", _) => &["nino", "ni_number", "nationalInsuranceNumber"],
        ("FR_NIR", _) => &["nir", "numero_securite_sociale", "insee"],
        ("IT_CODICE_FISCALE", _) => &["codice_fiscale", "codiceFiscale", "cf"],
        ("ES_DNI", _) => &["dni", "nif", "documento"],
        ("ES_NIE", _) => &["nie", "numero_nie"],
        ("PHONE", _) => &["phone", "phoneNumber", "mobile", "telefon", "tel"],
        ("EMAIL", _) => &["email", "emailAddress", "mail"],
        ("IBAN", _) => &["iban", "bank_account", "accountIban"],
        _ => &["value"],
    };
    k[r.below(k.len())]
}

/// A value of `entity` in the form that says nothing by itself (digits without separators,
/// no phone prefix), so only its key makes it detectable.
fn bare_value(r: &mut Rng, entity: &str, lang: &str) -> String {
    match entity {
        "US_SSN" | "SE_PERSONNUMMER" | "DE_TAX_ID" => value(r, entity, lang)
            .1
            .chars()
            .filter(char::is_ascii_digit)
            .collect(),
        "PHONE" => {
            let (v, bare) = phone(r, lang);
            if bare || !matches!(lang, "es" | "pl") {
                v
            } else {
                loop {
                    let (v, bare) = phone(r, lang);
                    if bare {
                        break v;
                    }
                }
            }
        }
        // As JSON APIs serialise a date: a date and time at midnight, in UTC or in the
        // browser's time zone and then stored in UTC (the day before, at 22:00, 23:00 or
        // 18:30).
        "DOB" if r.chance(0.5) => {
            let (y, m, d) = date(r, 1940, 2005);
            let d = d.max(2);
            match r.below(3) {
                0 => format!("{y}-{m:02}-{d:02}T00:00:00.000Z"),
                1 => format!("{y}-{m:02}-{:02}T{}:00:00Z", d - 1, r.pick(&["22", "23"])),
                _ => format!("{y}-{m:02}-{:02}T18:30:00+00:00", d - 1),
            }
        }
        _ => value(r, entity, lang).1,
    }
}

/// A look-alike of a key-dependent value under a key that says it is something else: the
/// kind, the key and the value (checksum-valid where the look-alike has a checksum).
fn key_negative(r: &mut Rng, lang: &str) -> (&'static str, &'static str, String) {
    match r.below(7) {
        0 => (
            "order id",
            *r.pick(&[
                "order_id",
                "orderId",
                "invoice_no",
                "invoiceNumber",
                "ticket_id",
                "reference",
            ]),
            bsn(r),
        ),
        1 => (
            "tracking",
            *r.pick(&["tracking_number", "trackingNo", "parcel_id", "sku"]),
            pesel(r),
        ),
        2 => (
            "account id",
            *r.pick(&["account_id", "customerId", "transaction_id", "batch"]),
            value(r, "DE_TAX_ID", lang)
                .1
                .chars()
                .filter(char::is_ascii_digit)
                .collect(),
        ),
        3 => {
            let (y, m, d) = date(r, 1950, 2025);
            let v = if r.chance(0.5) {
                format!("{y}-{m:02}-{d:02}")
            } else {
                format!("{d:02}.{m:02}.{y}")
            };
            (
                "date",
                *r.pick(&[
                    "created_at",
                    "updatedAt",
                    "due_date",
                    "shipped_on",
                    "valid_until",
                    "founded",
                ]),
                v,
            )
        }
        4 => (
            "serial",
            *r.pick(&["serial", "build", "model", "part_number", "sku"]),
            passport(r, lang),
        ),
        5 => (
            "code",
            *r.pick(&["code", "promo_code", "voucher", "warehouse"]),
            format!("{}{}", r.chars(4, UPPER), r.chars(4, UPPER)),
        ),
        _ => (
            "numeric id",
            *r.pick(&["user_id", "ticketId", "count"]),
            ssn(r).replace('-', ""),
        ),
    }
}

/// The key-dependent entity types for a language, and a few self-evident ones.
fn key_pool(lang: &str) -> Vec<&'static str> {
    let mut pool = vec!["DOB", "PASSPORT", "BIC", "PHONE", "DOB", "PASSPORT"];
    pool.extend(national(lang));
    pool.extend(national(lang));
    pool.extend(["EMAIL", "IBAN"]);
    pool
}

impl W {
    /// Like `json_inner`, writing some characters as `\u00XX` escapes.
    fn json_inner_escaped(&mut self, other: &W, r: &mut Rng, p: f64) {
        let mut esc = W::default();
        let mut map = Vec::with_capacity(other.text.len() + 1);
        for (i, c) in other.text.char_indices() {
            while map.len() <= i {
                map.push(esc.text.len());
            }
            if c.is_ascii_graphic() && c != '\\' && c != '"' && r.chance(p) {
                esc.text.push_str(&format!("\\u{:04x}", c as u32));
            } else {
                esc.text.push_str(&json_escape(&c.to_string()));
            }
        }
        while map.len() <= other.text.len() {
            map.push(esc.text.len());
        }
        let base = self.text.len();
        self.text.push_str(&esc.text);
        for (src, dst) in [
            (&other.pii, &mut self.pii),
            (&other.negatives, &mut self.negatives),
        ] {
            for s in src {
                dst.push(Span {
                    label: s.label.clone(),
                    start: base + map[s.start],
                    end: base + map[s.end],
                });
            }
        }
    }
}

/// A key and its values: (positive, entity or kind of negative, value).
type Member<'a> = (String, Vec<(bool, &'a str, String)>);

fn key_member(r: &mut Rng, w: &mut W, key: &str, values: &[(bool, &str, String)]) {
    w.raw(&format!("\"{}\": ", json_escape(key)));
    let array = values.len() > 1;
    if array {
        w.raw("[");
    }
    for (i, (positive, label, v)) in values.iter().enumerate() {
        if i > 0 {
            w.raw(", ");
        }
        let mut inner = W::default();
        if *positive {
            inner.pii(label, v);
        } else {
            inner.neg(label, v);
        }
        w.raw("\"");
        w.json_inner_escaped(&inner, r, 0.03);
        w.raw("\"");
    }
    if array {
        w.raw("]");
    }
}

/// One API-style record: key-dependent values under their keys (some as arrays under a
/// plural key), look-alikes under unrelated keys, numbers.
fn key_record(r: &mut Rng, w: &mut W, lang: &str) {
    let pool = key_pool(lang);
    w.raw(&format!(
        "{{\"id\": {}, \"type\": \"{}\", \"attributes\": {{",
        r.range(1000, 999_999),
        r.pick(&["customer", "employee", "patient", "applicant"])
    ));
    let mut members: Vec<Member<'_>> = Vec::new();
    for _ in 0..r.range(3, 5) {
        let e = *r.pick(&pool);
        let mut key = field_key(r, e, lang).to_string();
        if members.iter().any(|(k, _)| k.starts_with(key.as_str())) {
            continue;
        }
        let n = if r.chance(0.2) { 2 } else { 1 };
        if n == 2 && !key.ends_with('s') {
            key.push('s');
        }
        let values = (0..n).map(|_| (true, e, bare_value(r, e, lang))).collect();
        members.push((key, values));
    }
    for _ in 0..r.range(1, 3) {
        let (kind, key, v) = key_negative(r, lang);
        if !members.iter().any(|(k, _)| k == key) {
            members.push((key.to_string(), vec![(false, kind, v)]));
        }
    }
    for i in (1..members.len()).rev() {
        let j = r.below(i + 1);
        members.swap(i, j);
    }
    for (i, (key, values)) in members.iter().enumerate() {
        if i > 0 {
            w.raw(", ");
        }
        key_member(r, w, key, values);
    }
    w.raw(&format!(
        "}}, \"meta\": {{\"version\": {}, \"order_id\": {}}}}}",
        r.range(1, 40),
        r.range(100_000_000, 999_999_999)
    ));
}

/// JSON documents (half of them JSON lines) of records whose keys are the only labels.
fn json_keys_doc(r: &mut Rng, lang: &str) -> W {
    let mut w = W::default();
    let n = r.range(2, 5);
    if r.chance(0.5) {
        for _ in 0..n {
            key_record(r, &mut w, lang);
            w.raw("\n");
        }
    } else {
        w.raw("{\"data\": [");
        for i in 0..n {
            if i > 0 {
                w.raw(", ");
            }
            key_record(r, &mut w, lang);
        }
        w.raw("], \"next\": null}");
    }
    w
}

// ---- configuration files: credentials by their names -------------------------------------

/// A credential as people choose them: letters, digits and some punctuation, `&` and `;` too
/// (which end a value only where another setting follows them: `&` or `;` before `name=`
/// reads as the next setting of a query or a connection string, and is not generated
/// inside a value).
fn credential_value(r: &mut Rng) -> String {
    let n = r.range(8, 40) as usize;
    let v = r.chars(1, ALNUM)
        + &r.chars(
            n,
            "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789!#%+-_.@^~&;/=",
        );
    // From the end, so that a replaced `&` is seen by the one before it (`&&name=`).
    let mut b = v.into_bytes();
    for i in (0..b.len()).rev() {
        let name = b[i + 1..]
            .iter()
            .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
            .count();
        let setting = name > 0 && matches!(b.get(i + 1 + name), Some(b'=' | b':'));
        if matches!(b[i], b'&' | b';') && setting {
            b[i] = b'x';
        }
    }
    String::from_utf8(b).unwrap_or_default()
}

/// The kinds of [`service_key`].
const SERVICE_KEYS: usize = 8;

/// A key of a well-known service, by its prefix, under a name that is no credential's name:
/// the setting's name, the entity type and the key. (The configuration stream draws the
/// kinds but the last, PyPI, which came later: so the stream stayed as it was.)
fn service_key(r: &mut Rng, kind: usize) -> (&'static str, &'static str, String) {
    match kind {
        0 => {
            let mode = r.pick::<&str>(&["sk_live_", "rk_live_", "sk_test_"]);
            let key = format!("{mode}{}", r.chars(40, ALNUM));
            ("STRIPE=", "STRIPE_KEY", key)
        }
        1 => {
            let key = format!("sk-proj-{}A1b", r.chars(100, B64URL));
            ("OPENAI=", "OPENAI_KEY", key)
        }
        2 => {
            let key = format!("sk-ant-api03-{}AA", r.chars(93, B64URL));
            ("anthropic: ", "ANTHROPIC_KEY", key)
        }
        3 => {
            let key = format!("glpat-{}", r.chars(20, B64URL));
            ("GITLAB_TOKEN=", "GITLAB_TOKEN", key)
        }
        4 => (
            "NPM_TOKEN=",
            "NPM_TOKEN",
            format!("npm_{}", r.chars(36, ALNUM)),
        ),
        5 => (
            "HF=",
            "HUGGINGFACE_TOKEN",
            format!("hf_{}", r.chars(34, ALNUM)),
        ),
        6 => {
            let key = format!("SG.{}.{}", r.chars(22, B64URL), r.chars(43, B64URL));
            ("SENDGRID=", "SENDGRID_KEY", key)
        }
        _ => {
            let key = format!("pypi-AgEIcHlwaS5vcmc{}", r.chars(120, B64URL));
            ("PYPI=", "PYPI_TOKEN", key)
        }
    }
}

/// A configuration dump as tool results carry them (an env file, YAML, INI, a connection
/// string, a callback URL): credentials after their names, and around them settings,
/// placeholders, cursors and comments that are no credential.
fn config_doc(r: &mut Rng) -> W {
    let mut w = W::default();
    for _ in 0..r.range(4, 9) {
        match r.below(16) {
            15 => {
                // Command lines (process lists, shell histories, CI logs) and cookies.
                let v = credential_value(r);
                match r.below(5) {
                    4 => {
                        // A link an API returns, its query's `@` percent-encoded.
                        w.raw("next: https://crm.internal/api/users?email=");
                        w.pii("EMAIL", &email(r, "en").replace('@', "%40"));
                        w.raw("&page=2");
                    }
                    0 => {
                        w.raw("$ curl -u app:");
                        w.pii("SECRET", &v);
                        w.raw(" https://api.internal/v1/export");
                    }
                    1 => {
                        w.raw("$ pg_dump --password ");
                        w.pii("SECRET", &v);
                        w.raw(" crm");
                    }
                    2 => {
                        // A user and a group are no password.
                        w.raw("$ docker run -u ");
                        let id = r.range(1000, 9999).to_string();
                        w.neg("uid", &format!("{id}:{id}"));
                        w.raw(" registry.internal/crm:latest");
                    }
                    _ => {
                        w.raw("> Cookie: sessionid=");
                        w.pii("SECRET", &r.chars(32, "0123456789abcdef"));
                        w.raw("; theme=dark");
                    }
                }
            }
            12 => {
                // A request log's `Authorization` header (a JWT there is the JWT detector's).
                match r.below(3) {
                    0 => {
                        w.raw("> Authorization: Bearer ");
                        let n = r.range(20, 60) as usize;
                        w.pii("SECRET", &r.chars(n, B64URL));
                    }
                    1 => {
                        use base64::Engine as _;
                        let user = r.pick::<&str>(&["app", "svc-export", "admin"]);
                        let pass = credential_value(r);
                        w.raw("curl -H \"Authorization: Basic ");
                        w.pii(
                            "SECRET",
                            &base64::engine::general_purpose::STANDARD
                                .encode(format!("{user}:{pass}")),
                        );
                        w.raw("\" https://api.internal/v1/export");
                    }
                    _ => {
                        w.raw("> Authorization: Bearer ");
                        w.pii("JWT", &jwt(r));
                    }
                }
            }
            13 => {
                // Keys of well-known services, by their prefixes, under names that are no
                // credential's name.
                let kind = r.below(SERVICE_KEYS - 1);
                let (name, entity, key) = service_key(r, kind);
                w.raw(name);
                w.pii(entity, &key);
            }
            14 => {
                // Prose and slugs that start as tokens do.
                let v = r.pick::<&str>(&[
                    "Basic information about your plan.",
                    "The bearer of this card is authorised.",
                    "Bearer tokens expire after an hour.",
                    "pipeline: sk-learn-compatible-estimators-v2",
                    "Publishable key: pk_live_51HqLyjWDarjtT1zdp7dcXYZ",
                    "User-Agent: Mozilla/5.0 (X11; Linux x86_64) Chrome/120.0.0.0 Safari/537.36",
                ]);
                w.neg("prose", v);
            }
            10 => {
                // A connection string's password (URL user information: no `@`, `/`, `#`,
                // `?` or `[` in it).
                w.raw(r.pick::<&str>(&["DATABASE_URL=postgres://app:", "REDIS_URL=redis://:"]));
                let v: String = credential_value(r)
                    .chars()
                    .map(|c| if "@/#?^".contains(c) { 'x' } else { c })
                    .collect();
                w.pii("SECRET", &v);
                w.raw("@db.internal:5432/crm");
            }
            11 => {
                // A port is no password.
                w.raw("HEALTH_URL=http://localhost:");
                w.neg("port", &r.range(1024, 65535).to_string());
                w.raw("/health");
            }
            0 => {
                w.raw(r.pick::<&str>(&["DB_PASSWORD=", "POSTGRES_PASSWORD=", "REDIS_PASSWORD="]));
                w.pii("SECRET", &credential_value(r));
            }
            1 => {
                w.raw(r.pick::<&str>(&[
                    "API_KEY=",
                    "STRIPE_API_KEY=",
                    "export AWS_SECRET_ACCESS_KEY=",
                ]));
                w.pii(
                    "SECRET",
                    &r.chars(
                        40,
                        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789/+",
                    ),
                );
            }
            2 => {
                w.raw("database:\n  host: db.internal\n  user: app\n  password: ");
                w.pii("SECRET", &credential_value(r).replace(['#', '&', ';'], "x"));
            }
            3 => {
                w.raw("  client_secret: \"");
                w.pii("SECRET", &credential_value(r).replace(['"', '\\'], "x"));
                w.raw("\"");
            }
            4 => {
                w.raw("[smtp]\nserver = mail.internal\npassword = ");
                w.pii("SECRET", &credential_value(r));
            }
            5 => {
                w.raw("Server=db.internal;Database=crm;User Id=app;Password=");
                let v = credential_value(r).replace(';', "x");
                w.pii("SECRET", &v);
                w.raw(";Encrypt=true");
            }
            6 => {
                w.raw("GET https://app.example/callback?access_token=");
                w.pii("SECRET", &r.chars(32, B64URL));
                w.raw("&state=");
                w.neg("cursor", &r.chars(12, ALNUM));
            }
            7 => {
                // Placeholders and templates stand where a credential would be.
                let v = r.pick::<&str>(&[
                    "${DB_PASSWORD}",
                    "{{ vault_secret }}",
                    "<your-api-key>",
                    "null",
                    "********",
                ]);
                w.raw(r.pick::<&str>(&["password: ", "API_KEY=", "client_secret = "]));
                w.neg("placeholder", v);
            }
            8 => {
                // A page cursor is no credential; neither is a hint about one.
                w.raw(r.pick::<&str>(&["nextPageToken: ", "page_token=", "password_hint: "]));
                w.neg("cursor", &r.chars(16, ALNUM));
            }
            _ => {
                // Prose: a name and a colon before words.
                w.raw("# Your password: ");
                w.neg("prose", r.pick::<&str>(&["must", "should", "cannot"]));
                w.raw(" be at least 12 characters long.");
            }
        }
        w.raw("\n");
    }
    w
}

/// The whole corpus, deterministic for [`SEED`].
pub fn generate() -> Vec<Doc> {
    let mut r = Rng::new(SEED);
    let mut docs = Vec::new();
    for lang in LANGS {
        for format in ["prose", "json", "csv", "jsonl"] {
            for i in 0..DOCS_PER_LANG_AND_FORMAT {
                let w = match format {
                    "prose" => prose(&mut r, lang),
                    "json" => json_doc(&mut r, lang),
                    "csv" => csv_doc(&mut r, lang),
                    _ => jsonl_doc(&mut r, lang),
                };
                docs.push(Doc {
                    id: format!("{lang}-{format}-{i:03}"),
                    format: format.into(),
                    lang: lang.to_string(),
                    text: w.text,
                    pii: w.pii,
                    negatives: w.negatives,
                });
            }
        }
    }
    // Its own stream, so that adding it left the documents above as they were.
    let mut r = Rng::new(SEED ^ 0x4A53_4F4E_4B45_5953);
    for lang in LANGS {
        for i in 0..DOCS_PER_LANG_AND_FORMAT {
            let w = json_keys_doc(&mut r, lang);
            docs.push(Doc {
                id: format!("{lang}-json_keys-{i:03}"),
                format: "json_keys".into(),
                lang: lang.to_string(),
                text: w.text,
                pii: w.pii,
                negatives: w.negatives,
            });
        }
    }
    // Configuration dumps, also in a stream of their own.
    let mut r = Rng::new(SEED ^ 0x434F_4E46_4947_5321);
    for i in 0..DOCS_PER_LANG_AND_FORMAT * 2 {
        let w = config_doc(&mut r);
        docs.push(Doc {
            id: format!("en-config-{i:03}"),
            format: "config".into(),
            lang: "en".into(),
            text: w.text,
            pii: w.pii,
            negatives: w.negatives,
        });
    }
    // One document with a key of each kind the configuration stream draws at random, so
    // that every type is scored.
    let mut r = Rng::new(SEED ^ 0x4B45_5953);
    let mut w = W::default();
    for kind in 0..SERVICE_KEYS {
        let (name, entity, key) = service_key(&mut r, kind);
        w.raw(name);
        w.pii(entity, &key);
        w.raw("\n");
    }
    docs.push(Doc {
        id: "en-keys-000".into(),
        format: "config".into(),
        lang: "en".into(),
        text: w.text,
        pii: w.pii,
        negatives: w.negatives,
    });
    docs
}

/// The corpus as JSON lines.
pub fn to_jsonl(docs: &[Doc]) -> String {
    let mut out = String::new();
    for d in docs {
        out.push_str(&serde_json::to_string(d).unwrap_or_default());
        out.push('\n');
    }
    out
}
