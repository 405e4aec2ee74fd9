//! Validators: each candidate found by the automaton is checked here (check digits, parsed
//! addresses, calendar dates, issuer tables, boundaries). A validator may narrow the span
//! (e.g. drop a stray leading `:`) or extend it by a bounded amount (PEM blocks, JWTs), and
//! may lower the base confidence of weak shapes (which then need a context word).
//!
//! Every function here works on byte offsets that the caller took from a match of the
//! automaton on `text`, and never panics on any input: slices are taken only at ASCII
//! positions or at offsets the automaton returned, through `get`.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::detectors::{FieldKind, MONTH_NAMES, field_kind};

/// The longest PEM block (header to end line) masked as one value.
pub(crate) const PEM_MAX: usize = 16 * 1024;
/// The longest JWT masked as one value.
pub(crate) const JWT_MAX: usize = 8 * 1024;
/// The longest value masked after a credential's name (`password=...`), and under a
/// credential's key in JSON.
pub(crate) const SECRET_MAX: usize = 1024;
/// How far before a credential's name [`Validator::Credential`] reads (its key's prefix,
/// indentation) to tell whether the key starts its line.
const CREDENTIAL_LOOKBEHIND: usize = 64;
/// The longest value read after a phone number's or an IBAN's field name in a text
/// ([`Validator::LabelledPhone`], [`Validator::LabelledIban`]).
const LABELLED_MAX: usize = 64;
/// How far before its separator a field's name is read back (a quoted key's opening quote,
/// a backslash before it): the longest name `field_kind` reads, and three bytes.
const LABEL_LOOKBEHIND: usize = 68;
/// How far past the start of its automaton match a labelled value may end: the longest
/// name, separators and quotes the pattern reads, and [`LABELLED_MAX`].
const LABELLED_EXTENT: usize = 192;

/// A validator: built-in ones are named after their entity; custom detectors may pick any
/// of them, typically `none`, `luhn`, `mod97` or `mod11`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Validator {
    /// Accept every match of the pattern.
    None,
    /// Luhn checksum over the digits (cards, IMEI, SE personnummer...).
    Luhn,
    /// ISO 7064 MOD 97-10 over the alphanumerics (letters as 10..35), remainder 1.
    Mod97,
    /// Weighted 11-test over the digits (weights n..2, last digit weight -1), as for NL BSN.
    Mod11,
    /// The token ends at a non-token byte (for prefixed secrets).
    TokenEnd,
    SlackToken,
    PemBlock,
    Jwt,
    Iban,
    Email,
    ItCf,
    Nino,
    EsNie,
    EsDni,
    Mac,
    Ipv6,
    Ipv4,
    Card,
    FrNir,
    Ssn,
    SePnr,
    Dob,
    Phone,
    NlBsn,
    PlPesel,
    DeTaxId,
    Passport,
    Bic,
    /// A credential's name, its separator and the first byte of its value, extended to the
    /// value's end (at most `SECRET_MAX` bytes); the span is the value alone. Placeholders
    /// (`null`, `true`, `string`...) are no secret, and after an unquoted `:` the key must
    /// start its line or the value look like no word (`Your password: must be...` in prose).
    Credential,
    /// The first byte of an `Authorization` scheme's token (`Bearer ...`, `Basic ...`),
    /// extended over the token (RFC 7235 `token68`, at most `SECRET_MAX` bytes); the span
    /// is the token alone. At least 12 bytes and no word (`basic information`), and no JWT
    /// (the `JWT` detector's).
    AuthToken,
    /// The first byte of a credential on a command line (`--password S3cret`, `-u user:S3cret`),
    /// after an optional quote, extended to the value's end (a blank or the closing quote;
    /// at most `SECRET_MAX` bytes); no variable or placeholder (`$DB_PASS`, `<password>`).
    CliCredential,
    /// A prefixed key: the match extended over the key's bytes (`[A-Za-z0-9_-]`, at most
    /// `SECRET_MAX` in all).
    Token,
    /// A [`Validator::Token`] whose bytes mix capitals, small letters and digits, as random
    /// keys do (`sk-...`, which also leads slugs).
    RandomToken,
    /// The first byte of a URL's password (`scheme://user:`), extended to the `@` that ends
    /// the user information (at most `SECRET_MAX` bytes); no `@`, no password (a port).
    UrlCredential,
    /// The name of a field that holds a phone number (its last word, as for a JSON key:
    /// `mobile`, `phone_number`, `Telefonnummer`), its separator and the first byte of its
    /// value, in any text (`"mobile": "4915112345678"` in JSON carried in a text, JSON Lines,
    /// YAML, `tel=...`); the span is the value, read whole as a JSON field of that name is
    /// (E.164 without its `+`, national forms), at most `LABELLED_MAX` bytes.
    LabelledPhone,
    /// The same for a field that holds an IBAN (`iban: de89370400440532013000`, in small
    /// letters in one run).
    LabelledIban,
}

pub(crate) type Check = Validator;

/// What a validator decided about a candidate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Verdict {
    pub start: usize,
    pub end: usize,
    /// Replaces the detector's base confidence (weak shapes of a strong detector).
    pub base: Option<f32>,
}

impl Verdict {
    fn span(start: usize, end: usize) -> Option<Verdict> {
        Some(Verdict {
            start,
            end,
            base: None,
        })
    }
    fn weak(start: usize, end: usize, base: f32) -> Option<Verdict> {
        Some(Verdict {
            start,
            end,
            base: Some(base),
        })
    }
}

fn digits(v: &[u8]) -> impl Iterator<Item = u32> + '_ {
    v.iter()
        .filter(|b| b.is_ascii_digit())
        .map(|b| u32::from(b - b'0'))
}

/// A short sequence on the stack (candidates are short), on the heap beyond `N` items.
pub(crate) struct Small<T: Copy + Default, const N: usize> {
    buf: [T; N],
    len: usize,
    heap: Vec<T>,
}

impl<T: Copy + Default, const N: usize> Small<T, N> {
    pub(crate) fn new() -> Self {
        Small {
            buf: [T::default(); N],
            len: 0,
            heap: Vec::new(),
        }
    }

    pub(crate) fn push(&mut self, x: T) {
        if self.len < N {
            self.buf[self.len] = x;
        } else {
            if self.len == N {
                self.heap.extend_from_slice(&self.buf);
            }
            self.heap.push(x);
        }
        self.len += 1;
    }
}

impl<T: Copy + Default, const N: usize> FromIterator<T> for Small<T, N> {
    fn from_iter<I: IntoIterator<Item = T>>(it: I) -> Self {
        let mut s = Small::new();
        for x in it {
            s.push(x);
        }
        s
    }
}

impl<T: Copy + Default, const N: usize> std::ops::Deref for Small<T, N> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        if self.len <= N {
            &self.buf[..self.len]
        } else {
            &self.heap
        }
    }
}

/// The digits of a candidate.
type Digits = Small<u32, 40>;
/// The bytes of a candidate, some left out.
type Bytes = Small<u8, 64>;

fn digit_vec(v: &[u8]) -> Digits {
    digits(v).collect()
}

pub(crate) fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn byte_at(t: &[u8], i: usize) -> Option<u8> {
    t.get(i).copied()
}

fn prev(t: &[u8], s: usize) -> Option<u8> {
    s.checked_sub(1).and_then(|i| byte_at(t, i))
}

/// `.5`, `-7`, `/3` right after a number: part of a longer dotted or dashed sequence.
fn continues_numeric(t: &[u8], e: usize, seps: &[u8]) -> bool {
    matches!(byte_at(t, e), Some(c) if seps.contains(&c))
        && matches!(byte_at(t, e + 1), Some(d) if d.is_ascii_digit())
}

/// `7-`, `A/`, `3.` right before a value: it continues a dotted, dashed or slashed sequence
/// (`AB-1985-03-03`, `10/12/2030`). A letter before a `.` or `:` ends a label instead
/// (`DOB:1985-03-03`, `Tel.0612345678`): only a digit continues a number there.
/// A word naming the value joined to it by `-` ends a label too (`SSN-536-22-1234`,
/// `tel-+49 30 1234567`, `ip-203.0.113.7`), where any other word before a `-` is an id's
/// prefix (`ORD-536-22-1234`, `AB-1985-03-03`).
fn preceded_numeric(t: &[u8], s: usize, seps: &[u8]) -> bool {
    if s < 2 {
        return false;
    }
    match (byte_at(t, s - 1), byte_at(t, s - 2)) {
        (Some(c @ (b'.' | b':')), Some(d)) if seps.contains(&c) => d.is_ascii_digit(),
        (Some(b'-'), Some(_)) if hyphen_label(t, s - 1) => false,
        (Some(c), Some(d)) => seps.contains(&c) && d.is_ascii_alphanumeric(),
        _ => false,
    }
}

/// Words that name a value when joined to it by `-` (see [`preceded_numeric`]).
const HYPHEN_LABELS: &[&[u8]] = &[
    b"bsn",
    b"cell",
    b"dni",
    b"dob",
    b"fax",
    b"ip",
    b"ipv4",
    b"ipv6",
    b"mobile",
    b"nie",
    b"nino",
    b"passport",
    b"pesel",
    b"phone",
    b"ssn",
    b"tel",
];

/// Whether the word ending right before the `-` at `h` is one of [`HYPHEN_LABELS`], a whole
/// word (the text's start or a byte other than a letter, digit, `-` or `_` before it).
fn hyphen_label(t: &[u8], h: usize) -> bool {
    // (The longest label is 8 letters: no need to walk back over a longer word.)
    let lo = h.saturating_sub(9);
    let start = t[lo..h]
        .iter()
        .rposition(|b| !b.is_ascii_alphanumeric())
        .map_or(lo, |i| lo + i + 1);
    let word = &t[start..h];
    let whole = start == 0 || !matches!(t[start - 1], b'-' | b'_');
    whole && HYPHEN_LABELS.iter().any(|l| l.eq_ignore_ascii_case(word))
}

/// The latest year a date of birth is taken in: next year (UTC), read once. (A fixed year
/// rejected every date of birth once the calendar passed it; one year of slack keeps a
/// long-running agent right across a new year.)
fn latest_birth_year() -> u32 {
    static YEAR: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *YEAR.get_or_init(|| {
        let year = crate::audit::timefmt::utc_year(crate::audit::store::now_ms());
        u32::try_from(year + 1).unwrap_or(u32::MAX)
    })
}

/// A four-digit year a date of birth can have.
fn birth_year(y: u32) -> bool {
    (1900..=latest_birth_year()).contains(&y)
}

pub(crate) fn luhn(ds: &[u32]) -> bool {
    if ds.len() < 2 {
        return false;
    }
    let mut sum = 0;
    for (i, &d) in ds.iter().rev().enumerate() {
        sum += if i % 2 == 1 {
            let x = d * 2;
            if x > 9 { x - 9 } else { x }
        } else {
            d
        };
    }
    sum % 10 == 0
}

/// ISO 7064 MOD 97-10 over alphanumerics (letters as 10..35); `None` for other bytes.
fn mod97(chars: impl Iterator<Item = u8>) -> Option<u32> {
    // Reduced only when the next step could overflow (below 2^56, `r * 100 + 35` fits): one
    // division per ~16 digits instead of one per character.
    let mut r: u64 = 0;
    for c in chars {
        let v = match c {
            b'0'..=b'9' => u64::from(c - b'0'),
            b'A'..=b'Z' => u64::from(c - b'A') + 10,
            b'a'..=b'z' => u64::from(c - b'a') + 10,
            _ => return None,
        };
        if r >= 1 << 56 {
            r %= 97;
        }
        r = if v >= 10 { r * 100 + v } else { r * 10 + v };
    }
    Some((r % 97) as u32)
}

fn mod11(ds: &[u32]) -> bool {
    let n = ds.len();
    if n < 2 {
        return false;
    }
    let mut sum: i64 = 0;
    for (i, &d) in ds.iter().enumerate() {
        let w = if i + 1 == n { -1 } else { (n - i) as i64 };
        sum += w * i64::from(d);
    }
    sum % 11 == 0
}

fn leap(y: u32) -> bool {
    (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400)
}

fn valid_date(y: u32, m: u32, d: u32) -> bool {
    let dim = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap(y) => 29,
        2 => 28,
        _ => return false,
    };
    d >= 1 && d <= dim
}

/// The number that decimal digits write, saturating.
fn decimal(ds: impl Iterator<Item = u32>) -> u32 {
    ds.fold(0u32, |a, d| a.saturating_mul(10).saturating_add(d))
}

fn num(ds: &[u32]) -> u32 {
    decimal(ds.iter().copied())
}

/// [`num`] of the digits of `v`, without collecting them (dates: three per candidate).
fn num_of(v: &[u8]) -> u32 {
    decimal(digits(v))
}

const ISO_COUNTRIES: &str = "ADAEAFAGAIALAMAOAQARASATAUAWAXAZBABBBDBEBFBGBHBIBJBLBMBNBOBQBRBSBTBVBWBYBZCACCCDCFCGCHCICKCLCMCNCOCRCUCVCWCXCYCZDEDJDKDMDODZECEEEGEHERESETFIFJFKFMFOFRGAGBGDGEGFGGGHGIGLGMGNGPGQGRGSGTGUGWGYHKHMHNHRHTHUIDIEILIMINIOIQIRISITJEJMJOJPKEKGKHKIKMKNKPKRKWKYKZLALBLCLILKLRLSLTLULVLYMAMCMDMEMFMGMHMKMLMMMNMOMPMQMRMSMTMUMVMWMXMYMZNANCNENFNGNINLNONPNRNUNZOMPAPEPFPGPHPKPLPMPNPRPSPTPWPYQARERORSRURWSASBSCSDSESGSHSISJSKSLSMSNSOSRSSSTSVSXSYSZTCTDTFTGTHTJTKTLTMTNTOTRTTTVTWTZUAUGUMUSUYUZVAVCVEVGVIVNVUWFWSXKYEYTZAZMZW";

fn is_country(c: &[u8]) -> bool {
    c.len() == 2 && ISO_COUNTRIES.as_bytes().chunks(2).any(|x| x == c)
}

const IBAN_LENGTHS: &[(&[u8; 2], usize)] = &[
    (b"AD", 24),
    (b"AE", 23),
    (b"AL", 28),
    (b"AT", 20),
    (b"AZ", 28),
    (b"BA", 20),
    (b"BE", 16),
    (b"BG", 22),
    (b"BH", 22),
    (b"BR", 29),
    (b"BY", 28),
    (b"CH", 21),
    (b"CR", 22),
    (b"CY", 28),
    (b"CZ", 24),
    (b"DE", 22),
    (b"DK", 18),
    (b"DO", 28),
    (b"EE", 20),
    (b"EG", 29),
    (b"ES", 24),
    (b"FI", 18),
    (b"FO", 18),
    (b"FR", 27),
    (b"GB", 22),
    (b"GE", 22),
    (b"GI", 23),
    (b"GL", 18),
    (b"GR", 27),
    (b"GT", 28),
    (b"HR", 21),
    (b"HU", 28),
    (b"IE", 22),
    (b"IL", 23),
    (b"IQ", 23),
    (b"IS", 26),
    (b"IT", 27),
    (b"JO", 30),
    (b"KW", 30),
    (b"KZ", 20),
    (b"LB", 28),
    (b"LC", 32),
    (b"LI", 21),
    (b"LT", 20),
    (b"LU", 20),
    (b"LV", 21),
    (b"MC", 27),
    (b"MD", 24),
    (b"ME", 22),
    (b"MK", 19),
    (b"MR", 27),
    (b"MT", 31),
    (b"MU", 30),
    (b"NL", 18),
    (b"NO", 15),
    (b"PK", 24),
    (b"PL", 28),
    (b"PS", 29),
    (b"PT", 25),
    (b"QA", 29),
    (b"RO", 24),
    (b"RS", 22),
    (b"SA", 24),
    (b"SC", 31),
    (b"SE", 24),
    (b"SI", 19),
    (b"SK", 24),
    (b"SM", 27),
    (b"ST", 25),
    (b"SV", 28),
    (b"TL", 23),
    (b"TN", 24),
    (b"TR", 26),
    (b"UA", 29),
    (b"VA", 22),
    (b"VG", 24),
    (b"XK", 20),
];

/// Groups of four separated by single spaces, the last one 1..=4 long.
fn groups_of_four(v: &[u8], sep: u8) -> bool {
    let mut groups = v.split(|&b| b == sep).peekable();
    while let Some(g) = groups.next() {
        let last = groups.peek().is_none();
        if (last && !(1..=4).contains(&g.len())) || (!last && g.len() != 4) {
            return false;
        }
    }
    true
}

fn iban(v: &[u8]) -> bool {
    // Grouped by spaces or by `-`, not both.
    let sep = v.iter().copied().find(|&b| b == b' ' || b == b'-');
    if sep.is_some_and(|sep| v.iter().any(|&b| (b == b' ' || b == b'-') && b != sep)) {
        return false;
    }
    let compact: Bytes = v
        .iter()
        .filter(|&&b| Some(b) != sep)
        .map(u8::to_ascii_uppercase)
        .collect();
    if compact.len() < 15 || !compact[..2].iter().all(u8::is_ascii_uppercase) {
        return false;
    }
    // (The table is sorted by country.)
    let Ok(k) = IBAN_LENGTHS.binary_search_by(|(c, _)| c[..].cmp(&compact[..2])) else {
        return false;
    };
    let len = IBAN_LENGTHS[k].1;
    if compact.len() != len || sep.is_some_and(|sep| !groups_of_four(v, sep)) {
        return false;
    }
    let rearranged = compact[4..].iter().chain(compact[..4].iter()).copied();
    mod97(rearranged) == Some(1)
}

fn card_issuer(ds: &[u32]) -> bool {
    let n = ds.len();
    let p = |k: usize| num(&ds[..k.min(n)]);
    let (p1, p2, p3, p4, p6) = (p(1), p(2), p(3), p(4), p(6));
    match p1 {
        // 13-digit Visa and Maestro numbers are no longer issued; 13 digits starting 4 or 5
        // are far more often EAN-13 barcodes.
        4 => matches!(n, 16 | 19),
        5 => match p2 {
            51..=55 => n == 16,
            50 | 56..=59 => (16..=19).contains(&n),
            _ => false,
        },
        2 => {
            ((2221..=2720).contains(&p4) && n == 16)
                || ((2200..=2204).contains(&p4) && (16..=19).contains(&n))
        }
        3 => match p2 {
            34 | 37 => n == 15,
            36 => (14..=19).contains(&n),
            38 | 39 => (16..=19).contains(&n),
            30 => (300..=305).contains(&p3) && (14..=19).contains(&n),
            35 => (3528..=3589).contains(&p4) && (16..=19).contains(&n),
            _ => false,
        },
        6 => {
            (p4 == 6011
                || (644..=649).contains(&p3)
                || p2 == 65
                || p2 == 62
                || (622_126..=622_925).contains(&p6)
                || p2 == 63
                || p2 == 67)
                && (16..=19).contains(&n)
        }
        _ => false,
    }
}

fn card_groups(v: &[u8]) -> bool {
    let mut seps = v.iter().copied().filter(|b| !b.is_ascii_digit());
    let Some(first) = seps.next() else {
        return true;
    };
    if seps.any(|s| s != first) {
        return false;
    }
    let g: Small<usize, 24> = v.split(|b| !b.is_ascii_digit()).map(<[u8]>::len).collect();
    let n = g.len();
    if g[..n - 1].iter().all(|&l| l == 4) && (1..=4).contains(&g[n - 1]) {
        return true;
    }
    matches!(&g[..], [4, 6, 5] | [4, 6, 4] | [4, 4, 5] | [4, 4, 4, 4, 3])
}

/// A numeric date: `Y-M-D`, `D.M.Y`, `D/M/Y`, `M/D/Y` (two-digit years allowed). Returns the
/// normalised `YYYY-MM-DD` (a two-digit year padded: `0085-03-12`). The reference the
/// normalisation's own writing of it is tested against.
#[cfg(test)]
pub(crate) fn numeric_date(v: &[u8]) -> Option<String> {
    let (y, m, d) = numeric_ymd(v)?;
    Some(format!("{y:04}-{m:02}-{d:02}"))
}

/// `n` in decimal, zero-padded to `width` digits (at most 10), as `{n:0width$}` writes it.
fn push_padded(out: &mut String, mut n: u32, width: usize) {
    let mut buf = [b'0'; 10];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let from = i.min(buf.len().saturating_sub(width));
    out.extend(buf[from..].iter().map(|&b| char::from(b)));
}

/// The year, month and day of a numeric date: `Y-M-D`, `D.M.Y`, `D/M/Y`, `M/D/Y` (two-digit
/// years allowed).
fn numeric_ymd(v: &[u8]) -> Option<(u32, u32, u32)> {
    // The date of an ISO 8601 date and time (`1985-03-03T00:00:00Z`).
    let v = v.split(|&b| b == b'T').next()?;
    let sep = *v.iter().find(|b| matches!(b, b'.' | b'/' | b'-'))?;
    let mut parts = [&v[..0]; 3];
    let mut k = 0;
    for p in v.split(|&b| b == sep) {
        if k == 3 || p.is_empty() || !p.iter().all(u8::is_ascii_digit) {
            return None;
        }
        parts[k] = p;
        k += 1;
    }
    if k != 3 {
        return None;
    }
    let n = parts.map(num_of);
    let year_ok = |y: u32, len: usize| len == 2 || (len == 4 && birth_year(y));
    if parts[0].len() == 4 {
        let (y, m, d) = (n[0], n[1], n[2]);
        return (year_ok(y, 4) && valid_date(y, m, d)).then_some((y, m, d));
    }
    let ylen = parts[2].len();
    if ylen != 2 && ylen != 4 {
        return None;
    }
    let y = n[2];
    if !year_ok(y, ylen) {
        return None;
    }
    let yy = if ylen == 2 { 2000 } else { y };
    if valid_date(yy, n[1], n[0]) {
        Some((y, n[1], n[0]))
    } else if valid_date(yy, n[0], n[1]) {
        Some((y, n[0], n[1]))
    } else {
        None
    }
}

/// A date with a month name, in any of the supported languages' word orders.
pub(crate) fn named_date(v: &str) -> Option<String> {
    let mut month = None;
    let mut nums: Vec<(u32, usize)> = Vec::new();
    for tok in v.split([' ', ',', '.', '-']) {
        if tok.is_empty() {
            continue;
        }
        let lead: String = tok.chars().take_while(char::is_ascii_digit).collect();
        if !lead.is_empty() {
            nums.push((lead.parse().ok()?, lead.len()));
            continue;
        }
        let lower = tok.to_lowercase();
        if let Some(&(_, m)) = MONTH_NAMES.iter().find(|(name, _)| *name == lower) {
            month = Some(m);
        }
    }
    let m = month?;
    let d = nums.iter().find(|(_, l)| *l <= 2)?.0;
    let y = nums.iter().find(|(_, l)| *l == 4)?.0;
    (birth_year(y) && valid_date(y, m, d)).then(|| format!("{y:04}-{m:02}-{d:02}"))
}

fn looks_like_date(v: &[u8]) -> bool {
    numeric_ymd(v).is_some()
}

fn pesel(ds: &[u32]) -> bool {
    if ds.len() != 11 {
        return false;
    }
    const W: [u32; 10] = [1, 3, 7, 9, 1, 3, 7, 9, 1, 3];
    let sum: u32 = ds.iter().zip(W).map(|(d, w)| d * w).sum();
    if (10 - sum % 10) % 10 != ds[10] {
        return false;
    }
    let (yy, mm, dd) = (num(&ds[0..2]), num(&ds[2..4]), num(&ds[4..6]));
    let (century, m) = match mm {
        1..=12 => (1900, mm),
        21..=32 => (2000, mm - 20),
        41..=52 => (2100, mm - 40),
        61..=72 => (2200, mm - 60),
        81..=92 => (1800, mm - 80),
        _ => return false,
    };
    valid_date(century + yy, m, dd)
}

fn de_tax_id(ds: &[u32]) -> bool {
    if ds.len() != 11 || ds[0] == 0 {
        return false;
    }
    let mut counts = [0u8; 10];
    for &d in &ds[..10] {
        counts[d as usize] += 1;
    }
    let repeated = counts.iter().filter(|&&c| c >= 2).count();
    if repeated != 1 || counts.iter().any(|&c| c > 3) {
        return false;
    }
    let mut product = 10;
    for &d in &ds[..10] {
        let mut sum = (d + product) % 10;
        if sum == 0 {
            sum = 10;
        }
        product = (2 * sum) % 11;
    }
    let check = (11 - product) % 10;
    check == ds[10]
}

fn se_pnr(ds: &[u32]) -> bool {
    let ten = match ds.len() {
        10 => ds,
        12 if matches!(num(&ds[..2]), 18..=20) => &ds[2..],
        _ => return false,
    };
    let (yy, mm, dd) = (num(&ten[0..2]), num(&ten[2..4]), num(&ten[4..6]));
    let dd = if dd > 60 { dd - 60 } else { dd };
    valid_date(2000 + yy, mm, dd) && luhn(ten)
}

fn nir(v: &[u8]) -> bool {
    let compact: Bytes = v.iter().copied().filter(|&b| b != b' ').collect();
    if compact.len() != 15 {
        return false;
    }
    let month = num_of(&compact[3..5]);
    if !(matches!(month, 1..=12) || month >= 20) {
        return false;
    }
    let mut body = [0u8; 13];
    body.copy_from_slice(&compact[..13]);
    match &compact[5..7] {
        b"2A" => body[5..7].copy_from_slice(b"19"),
        b"2B" => body[5..7].copy_from_slice(b"18"),
        _ => {}
    }
    if !body.iter().all(u8::is_ascii_digit) || !compact[13..].iter().all(u8::is_ascii_digit) {
        return false;
    }
    let n: u64 = body.iter().fold(0u64, |a, &b| a * 10 + u64::from(b - b'0'));
    let key = u64::from(num_of(&compact[13..15]));
    97 - n % 97 == key
}

fn it_cf(v: &[u8]) -> bool {
    if v.len() != 16 {
        return false;
    }
    const ODD: [u32; 26] = [
        1, 0, 5, 7, 9, 13, 15, 17, 19, 21, 2, 4, 18, 20, 11, 3, 6, 8, 12, 14, 16, 10, 22, 25, 24,
        23,
    ];
    let mut sum = 0;
    for (i, &c) in v[..15].iter().enumerate() {
        let k = match c {
            b'0'..=b'9' => (c - b'0') as usize,
            b'A'..=b'Z' => (c - b'A') as usize,
            _ => return false,
        };
        sum += if i % 2 == 0 { ODD[k] } else { k as u32 };
    }
    u32::from(v[15]) == u32::from(b'A') + sum % 26
}

const DNI_LETTERS: &[u8; 23] = b"TRWAGMYFPDXBNJZSQVHLCKE";

fn dni_letter(n: u32) -> u8 {
    DNI_LETTERS[(n % 23) as usize]
}

fn ssn(ds: &[u32]) -> bool {
    if ds.len() != 9 {
        return false;
    }
    let (area, group, serial) = (num(&ds[..3]), num(&ds[3..5]), num(&ds[5..]));
    let n = num(ds);
    area != 0
        && area != 666
        && area < 900
        && group != 0
        && serial != 0
        && n != 78_051_120
        && n != 219_099_999
}

fn nino(v: &[u8]) -> bool {
    if v.len() < 9 {
        return false;
    }
    // `AB123456C`, `AB 12 34 56 C`, or `AB 123456 C`.
    let spaces = v.iter().filter(|&&b| b == b' ').count();
    let ends_only = spaces == 2 && v[2] == b' ' && v[v.len() - 2] == b' ';
    if spaces != 0 && spaces != 4 && !ends_only {
        return false;
    }
    let p = &v[..2];
    !matches!(p, b"BG" | b"GB" | b"KN" | b"NK" | b"NT" | b"TN" | b"ZZ")
}

fn phone(t: &[u8], s: usize, e: usize) -> Option<Verdict> {
    let v = &t[s..e];
    // `0612345678.jpg`: a name with an extension (or a domain), not a number.
    let extension = byte_at(t, e) == Some(b'.') && byte_at(t, e + 1).is_some_and(is_word);
    if continues_numeric(t, e, b".-/:") || extension {
        return None;
    }
    // A number in a link that names it as one, in E.164 without its `+` (`wa.me/4915112345678`,
    // `send?phone=4915112345678`): the digits alone, judged as a field named `phone` is.
    if let Some(at) = phone_link(v) {
        let (ds, de) = labelled_phone(&v[at..])?;
        return Some(Verdict {
            start: s + at + ds,
            end: s + at + de,
            base: None,
        });
    }
    if v.iter().filter(|&&b| b == b'(').count() != v.iter().filter(|&&b| b == b')').count() {
        return None;
    }
    // (`_` is no glue: `__+49 30 1234567__`, `tel_0612345678`.)
    if preceded_numeric(t, s, b".-/")
        || prev(t, s).is_some_and(|b| b == b'+' || b.is_ascii_alphanumeric())
    {
        // `3/1 212-555-0199`: the `1` read as a NANP trunk prefix continues something else;
        // the number after it is judged on its own, as it was before the prefix was read.
        let trunk = v.len() > 2 && v[0] == b'1' && matches!(v[1], b' ' | b'.' | b'-');
        return if trunk { phone(t, s + 2, e) } else { None };
    }
    // A `+` percent-encoded in a link (`?phone=%2B4930123456`): judged as the `+` would be.
    let encoded_plus = after_encoded_plus(v);
    let v = encoded_plus.unwrap_or(v);
    // A date (and time) is not a phone number: `09/02/2017 06`.
    let third_group_end = v
        .iter()
        .enumerate()
        .filter(|&(i, b)| b.is_ascii_digit() && v.get(i + 1).is_none_or(|n| !n.is_ascii_digit()))
        .nth(2)
        .map(|(i, _)| i + 1);
    let year4 = |d: &[u8]| d.split(|b| !b.is_ascii_digit()).any(|g| g.len() == 4);
    if third_group_end.is_some_and(|end| year4(&v[..end]) && looks_like_date(&v[..end])) {
        return None;
    }
    let n = digits(v).count();
    if v[0] == b'+' || encoded_plus.is_some() {
        return ((8..=15).contains(&n) && international_len(v)).then_some(Verdict {
            start: s,
            end: e,
            base: None,
        });
    }
    if v.starts_with(b"00") {
        // `0049 30 1234567`; without separators only a full-length number.
        let bare = v.iter().all(u8::is_ascii_digit);
        let range = if bare { 12..=17 } else { 10..=17 };
        return (range.contains(&n) && international_len(&v[2..])).then_some(Verdict {
            start: s,
            end: e,
            base: None,
        });
    }
    if looks_like_date(v) {
        return None;
    }
    // Ranges: two equal-length groups around a dash ("1200-1299").
    let groups: Small<&[u8], 16> = v
        .split(|b| !b.is_ascii_digit())
        .filter(|g| !g.is_empty())
        .collect();
    if groups.len() == 2 && groups[0].len() == groups[1].len() && v.contains(&b'-') {
        return None;
    }
    let starts0 = v[0] == b'0' || v.starts_with(b"(0");
    if starts0 {
        // Without separators: 10 digits (`0612345678`), or a UK / German mobile
        // (`07700900123`, `015112345678`).
        let ok = if groups.len() == 1 {
            n == 10
                || ((11..=12).contains(&n)
                    && (v.starts_with(b"07")
                        || v.starts_with(b"015")
                        || v.starts_with(b"016")
                        || v.starts_with(b"017")))
        } else {
            (9..=12).contains(&n)
        };
        // A bare run of digits is a weaker phone number (and compared with other readings).
        let base = if groups.len() == 1 { Some(0.6) } else { None };
        return ok.then_some(Verdict {
            start: s,
            end: e,
            base,
        });
    }
    // NANP: 3-3-4 with an area and exchange code that are not N11, after the trunk prefix
    // `1-` if any.
    let trunk = n == 11 && v[0] == b'1' && v.get(1).is_some_and(|b| !b.is_ascii_digit());
    if (n == 10 || trunk) && groups.len() >= 2 {
        let ds = digit_vec(v);
        let ds = &ds[usize::from(trunk)..];
        let n11 = |a: &[u32]| a[1] == 1 && a[2] == 1;
        if ds[0] >= 2
            && ds[3] >= 2
            && !n11(&ds[0..3])
            && !n11(&ds[3..6])
            && groups.last().is_some_and(|g| g.len() == 4)
        {
            return Some(Verdict {
                start: s,
                end: e,
                base: None,
            });
        }
    }
    // A national number without trunk prefix (PL, ES, IT mobiles): only with a context word.
    (9..=10).contains(&n).then_some(Verdict {
        start: s,
        end: e,
        base: Some(0.25),
    })
}

/// Country codes whose national numbers have a known length (ITU-T E.164 national
/// numbering plans): `(country code, shortest, longest national significant number)`. Other
/// codes take any length E.164 allows.
const NATIONAL_LENGTHS: &[(&[u8], usize, usize)] = &[
    (b"1", 10, 10),
    (b"7", 10, 10),
    (b"27", 9, 9),
    (b"30", 10, 10),
    (b"31", 9, 9),
    (b"32", 8, 9),
    (b"33", 9, 9),
    (b"34", 9, 9),
    (b"36", 8, 9),
    (b"39", 6, 11),
    (b"40", 9, 9),
    (b"41", 9, 9),
    (b"44", 7, 10),
    (b"45", 8, 8),
    (b"46", 7, 13),
    (b"47", 8, 8),
    (b"48", 9, 9),
    (b"61", 9, 9),
    (b"81", 9, 10),
    (b"91", 10, 10),
    (b"351", 9, 9),
    (b"353", 7, 9),
];

/// Whether an international number (after its `+` or `00`) is as long as its country's
/// numbers are: `+1 2345678` (a count written with a plus) is no NANP number. The trunk
/// prefix written as `(0)` (`+44 (0)20 ...`) is not dialled and does not count.
fn international_len(v: &[u8]) -> bool {
    let v = v.strip_prefix(b"+").unwrap_or(v);
    let mut ds: Small<u8, 24> = Small::new();
    let mut i = 0;
    while i < v.len() {
        if v[i..].starts_with(b"(0)") {
            i += 3;
            continue;
        }
        if v[i].is_ascii_digit() {
            ds.push(v[i]);
        }
        i += 1;
    }
    NATIONAL_LENGTHS
        .iter()
        .find(|(cc, _, _)| ds.starts_with(cc))
        .is_none_or(|&(cc, lo, hi)| (lo..=hi).contains(&(ds.len() - cc.len())))
}

/// Where the number starts in a match of the link pattern of `PHONE` (`wa.me/...`,
/// `?phone=...`), `None` for a match of the other patterns.
fn phone_link(v: &[u8]) -> Option<usize> {
    if v.starts_with(b"wa.me/") {
        return Some(6);
    }
    if !matches!(v.first(), Some(b'?' | b'&' | b';')) {
        return None;
    }
    v.iter().position(|&b| b == b'=').map(|i| i + 1)
}

/// What follows a percent-encoded `+` (`%2B`, `%2b`) that `v` starts with.
fn after_encoded_plus(v: &[u8]) -> Option<&[u8]> {
    v.get(..3)
        .filter(|p| p.eq_ignore_ascii_case(b"%2b"))
        .map(|_| &v[3..])
}

fn email(t: &[u8], s: usize, e: usize) -> Option<Verdict> {
    let (mut s, mut v) = (s, &t[s..e]);
    // Outside ASCII, the pattern takes any character of two bytes; an address, only letters
    // and digits (`josé@correo.es`, `jane@bücher.de`). A local part starts after any other
    // (`Mail\u{a0}jane@example.org`, `x«jane@example.org`); a domain holds none.
    if !v.is_ascii() {
        let (local, domain) = split_at_sign(v)?;
        let other = |c: char| !c.is_ascii() && !c.is_alphanumeric();
        if std::str::from_utf8(domain).ok()?.chars().any(other) {
            return None;
        }
        let local = std::str::from_utf8(local).ok()?;
        if let Some((i, c)) = local.char_indices().rfind(|&(_, c)| other(c)) {
            let after = i + c.len_utf8();
            if !local[after..].starts_with(char::is_alphanumeric) {
                return None;
            }
            s += after;
            v = &t[s..e];
        }
    }
    let (local, domain) = split_at_sign(v)?;
    if local.is_empty() || local.ends_with(b".") || local.windows(2).any(|w| w == b"..") {
        return None;
    }
    if domain
        .split(|&b| b == b'.')
        .any(|l| l.is_empty() || l.starts_with(b"-") || l.ends_with(b"-"))
    {
        return None;
    }
    Verdict::span(local_start(t, s), e)
}

/// An address's local part and domain: around its `@`, or around the last `%40` (a
/// percent-encoded `@`) of an address without one.
fn split_at_sign(v: &[u8]) -> Option<(&[u8], &[u8])> {
    match v.iter().position(|&b| b == b'@') {
        Some(at) => Some((&v[..at], &v[at + 1..])),
        None => {
            let at = v.windows(3).rposition(|w| w == b"%40")?;
            Some((&v[..at], &v[at + 3..]))
        }
    }
}

/// An address as one writes it (`jane.doe%40example.com` as `jane.doe@example.com`), for
/// its pseudonym.
fn decoded_address(v: &str) -> std::borrow::Cow<'_, str> {
    match split_at_sign(v.as_bytes()) {
        Some((local, domain)) if !v.contains('@') => std::borrow::Cow::Owned(format!(
            "{}@{}",
            &v[..local.len()],
            &v[v.len() - domain.len()..]
        )),
        _ => std::borrow::Cow::Borrowed(v),
    }
}

/// Where a local part whose match starts at `s` begins: the pattern's local part is ASCII
/// (see [`super::detectors::EMAIL_PATTERN`]), so a match of `jürgen@example.de` starts at
/// `rgen`; the address starts at the first of the letters and local-part bytes before it
/// (at most [`super::detectors::EMAIL_LOCAL_MAX`] characters in all), a letter or digit.
/// What it reads before `s` ends with the character before that start (the engine's reach
/// of a verdict that starts before its match).
fn local_start(t: &[u8], s: usize) -> usize {
    use super::detectors::{EMAIL_LOCAL_MAX, email_local};
    if prev(t, s).is_none_or(|b| b < 0x80) {
        return s;
    }
    let (mut i, mut start, mut chars) = (s, s, 0);
    while i > 0 && chars < EMAIL_LOCAL_MAX {
        // The char before `i` (`t` is UTF-8 text and `i` a char boundary).
        let mut j = i - 1;
        while j > 0 && i - j < 4 && (t[j] & 0xC0) == 0x80 {
            j -= 1;
        }
        let c = std::str::from_utf8(&t[j..i])
            .ok()
            .and_then(|x| x.chars().next());
        match c {
            Some(c) if c.is_ascii() && email_local(c as u8) => {}
            Some(c) if !c.is_ascii() && c.is_alphanumeric() => {}
            _ => break,
        }
        i = j;
        chars += 1;
        if t[i] >= 0x80 || t[i].is_ascii_alphanumeric() {
            start = i;
        }
    }
    // (An ASCII letter or digit the walk ended on started the match already, unless a
    // letter outside ASCII precedes it: `start` is the leftmost letter or digit.)
    start
}

fn ipv4(t: &[u8], s: usize, e: usize) -> Option<Verdict> {
    let v = std::str::from_utf8(&t[s..e]).ok()?;
    Ipv4Addr::from_str(v).ok()?;
    let suffix =
        byte_at(t, e) == Some(b'-') && byte_at(t, e + 1).is_some_and(|b| b.is_ascii_alphabetic());
    if prev(t, s) == Some(b'.')
        || continues_numeric(t, e, b".")
        || (preceded_numeric(t, s, b"-") && !ends_ipv4(t, s - 1))
        || suffix
        || product_version(t, s)
    {
        return None;
    }
    Verdict::span(s, e)
}

/// The longest product name [`product_version`] reads before the `/`.
const PRODUCT_MAX: usize = 32;

/// Whether `t[s..]` is a version after a product's name (`Chrome/120.0.0.0` in a
/// `User-Agent`): a `/` right before it, and before that a name that starts with a letter
/// and a word (`/hosts/10.0.0.1` and `http://10.0.0.1` are addresses).
fn product_version(t: &[u8], s: usize) -> bool {
    if prev(t, s) != Some(b'/') {
        return false;
    }
    let name = t[..s - 1]
        .iter()
        .rev()
        .take(PRODUCT_MAX + 1)
        .take_while(|&&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        .count();
    let start = s - 1 - name;
    (1..=PRODUCT_MAX).contains(&name)
        && t[start].is_ascii_alphabetic()
        && prev(t, start).is_none_or(|b| matches!(b, b' ' | b'\t' | b'\n' | b'(' | b';' | b','))
}

/// Bytes before its match the IPv4 validator reads: the dash and the first address of a
/// range, and the byte before that address; or a product's name, its `/` and the byte
/// before the name.
pub(crate) const IPV4_LOOKBEHIND: usize = 1 + PRODUCT_MAX + 1 + 1;

/// Whether `t[..end]` ends with a whole IPv4 address (`10.0.0.1` of `10.0.0.1-10.0.0.255`:
/// the value after the dash of a range is an address too).
fn ends_ipv4(t: &[u8], end: usize) -> bool {
    let len = t[..end]
        .iter()
        .rev()
        .take(16)
        .take_while(|b| b.is_ascii_digit() || **b == b'.')
        .count();
    let start = end - len;
    len <= 15
        && prev(t, start).is_none_or(|b| !b.is_ascii_alphanumeric() && b != b'.' && b != b'-')
        && std::str::from_utf8(&t[start..end])
            .ok()
            .is_some_and(|a| Ipv4Addr::from_str(a).is_ok())
}

fn ipv6(t: &[u8], s: usize, e: usize) -> Option<Verdict> {
    let v = t.get(s..e)?;
    // Part of a longer run of groups, or glued to a word (`io::Error`); a colon after a word
    // is a label (`ip:fe80::1`).
    let glued = match prev(t, s) {
        Some(b':') => s >= 2 && (t[s - 2].is_ascii_hexdigit() || t[s - 2] == b':'),
        Some(b) => b.is_ascii_alphanumeric() || b == b'.',
        None => false,
    };
    // A colon after it continues it, unless a blank or the end follows (`from fe80::1: ...`
    // in a log line).
    let continued = match byte_at(t, e) {
        Some(b':') => !matches!(byte_at(t, e + 1), None | Some(b' ' | b'\t' | b'\r' | b'\n')),
        Some(b) => b.is_ascii_alphanumeric(),
        None => false,
    };
    if glued || continued {
        return None;
    }
    let colons = v.iter().filter(|&&b| b == b':').count();
    let double = v.windows(2).any(|w| w == b"::");
    if !(double || colons == 7) {
        return None;
    }
    let hex = v.iter().filter(|b| b.is_ascii_hexdigit()).count();
    let groups = v.split(|&b| b == b':').filter(|g| !g.is_empty()).count();
    if hex < 4 || groups < 2 {
        return None;
    }
    // Hex words around `::` without a digit are a path in code (`Cafe::Add`, `Face::bad`),
    // not an address (addresses carry digits: `2001:db8::`, `fe80::1`).
    if double && !v.iter().any(u8::is_ascii_digit) {
        return None;
    }
    Ipv6Addr::from_str(std::str::from_utf8(v).ok()?).ok()?;
    Verdict::span(s, e)
}

fn mac(t: &[u8], s: usize, e: usize) -> Option<Verdict> {
    let v = &t[s..e];
    let mut seps = v.iter().copied().filter(|b| !b.is_ascii_hexdigit());
    let first = seps.next();
    if seps.any(|c| Some(c) != first) || v.iter().all(|&b| b == b'0' || !b.is_ascii_hexdigit()) {
        return None;
    }
    // Without leading zeros (`0:1a:2b:3:4d:5e`): a byte is below 16 one time in 16, so most
    // groups still have two digits; `1:2:3:4:5:6` is a list, not an address.
    if first == Some(b':') && v.len() < 17 {
        let pairs = v.split(|&b| b == b':').filter(|g| g.len() == 2).count();
        if pairs < 4 {
            return None;
        }
    }
    if matches!(byte_at(t, e), Some(b':' | b'-' | b'.'))
        && byte_at(t, e + 1).is_some_and(|b| b.is_ascii_hexdigit())
    {
        return None;
    }
    if matches!(prev(t, s), Some(b':' | b'-' | b'.'))
        && prev(t, s - 1).is_some_and(|b| b.is_ascii_hexdigit())
    {
        return None;
    }
    Verdict::span(s, e)
}

fn pem(t: &[u8], s: usize, e: usize) -> Option<Verdict> {
    let limit = t.len().min(s + PEM_MAX);
    let body = t.get(e..limit)?;
    if let Some(i) = body.windows(9).position(|w| w == b"-----END ") {
        let after = e + i + 9;
        let tail = t.get(after..limit)?;
        if let Some(j) = tail.windows(5).take(64).position(|w| w == b"-----") {
            return Verdict::span(s, after + j + 5);
        }
    }
    // No end line in reach: mask the header and the key material that follows it.
    let mut end = e;
    while end < limit && (t[end].is_ascii_alphanumeric() || b"+/=\r\n\t \\".contains(&t[end])) {
        end += 1;
    }
    Verdict::span(s, end)
}

/// Whether a token ends at `e`: no base64url byte follows, or only a run of `_` does before
/// the end or another byte (Markdown emphasis, `_AIza..._`, not a longer token).
fn token_ends(t: &[u8], e: usize) -> bool {
    let after = t[e..].iter().find(|&&b| b != b'_');
    !byte_at(t, e).is_some_and(b64url) || !after.is_some_and(|&b| b64url(b))
}

fn b64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

fn jwt(t: &[u8], s: usize) -> Option<Verdict> {
    let limit = t.len().min(s + JWT_MAX);
    let run = |from: usize| {
        let mut i = from;
        while i < limit && b64url(t[i]) {
            i += 1;
        }
        i
    };
    let e1 = run(s);
    if byte_at(t, e1) != Some(b'.') || !t.get(e1 + 1..).is_some_and(|r| r.starts_with(b"eyJ")) {
        return None;
    }
    let e2 = run(e1 + 1);
    if byte_at(t, e2) != Some(b'.') {
        return None;
    }
    let mut e3 = run(e2 + 1);
    // Under Markdown emphasis (`_eyJ..._`), the closing `_`s are not the signature's.
    let open = t[..s].iter().rev().take_while(|&&b| b == b'_').count();
    for _ in 0..open {
        if e3 > e2 + 2 && t[e3 - 1] == b'_' {
            e3 -= 1;
        }
    }
    use base64::Engine as _;
    let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(&t[s..e1])
        .ok()?;
    if !header.starts_with(b"{")
        || !header
            .windows(5)
            .any(|w| w == b"\"alg\"" || w == b"\"typ\"")
    {
        return None;
    }
    Verdict::span(s, e3)
}

/// A byte that ends a credential's value in a text: blanks, quotes, markup.
fn secret_byte(b: u8) -> bool {
    !matches!(
        b,
        b' ' | b'\t' | b'\r' | b'\n' | b'"' | b'\'' | b'`' | b'<' | b'>'
    )
}

/// Whether the `&`, `;` or `,` at `t[i]` separates a credential's value from what follows
/// (`?access_token=...&state=1`, `Password=...;Host=db`, `{"api_key": 12345, "x": 1}`), as
/// it does when a name and `=` or `:` follow it, or, for a comma, a quote, a blank or the
/// end; otherwise it is part of the value (`PASSWORD=ab&cd`, `...;` at the end of a line).
fn separates(t: &[u8], i: usize) -> bool {
    let rest = t.get(i + 1..).unwrap_or_default();
    // (Blanks may follow the separator: `Password=...; Host=db`, `Cookie: sid=...; theme=x`.)
    let blanks = rest
        .iter()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count();
    let name = rest[blanks..]
        .iter()
        .take_while(|&&b| is_word(b) || b == b'.' || b == b'-')
        .count();
    match rest.get(blanks + name) {
        Some(b'=' | b':') if name > 0 => true,
        None => name == 0 && t[i] == b',',
        Some(&b) => name == 0 && t[i] == b',' && !secret_byte(b),
    }
}

/// Words that stand in for a credential's value without being one: empty settings, schema
/// examples, earlier masking.
fn placeholder(v: &[u8]) -> bool {
    const WORDS: &[&str] = &[
        "null",
        "nil",
        "none",
        "true",
        "false",
        "undefined",
        "string",
        "required",
        "optional",
        "redacted",
        "hidden",
        "masked",
    ];
    WORDS.iter().any(|w| v.eq_ignore_ascii_case(w.as_bytes()))
        || v.iter().all(|&b| b == b'*' || b == b'x' || b == b'X')
}

/// Whether a credential's value in a text may start with `b`: not a separator (an empty
/// `password=&next=...`) or the end of what holds it.
fn secret_start(b: u8) -> bool {
    secret_byte(b) && !matches!(b, b'(' | b')' | b']' | b'}' | b'\\' | b'&' | b';' | b',')
}

/// Whether position `s` of `t` is inside the entity name of a pseudonym's mask, `[` +
/// capitals, digits and `_` + `:` + 8 hex digits + `]`: `[GOOGLE_API_KEY:4f1c9a2b]` holds
/// `API_KEY:4`, which the credential pattern reads as a name and a value.
pub(super) fn in_mask_entity(t: &[u8], s: usize) -> bool {
    let entity = |b: &&u8| b.is_ascii_uppercase() || b.is_ascii_digit() || **b == b'_';
    let Some((head, tail)) = t.split_at_checked(s) else {
        return false;
    };
    let before = mask_entity_before(head);
    let after = tail
        .iter()
        .take(CREDENTIAL_LOOKBEHIND)
        .take_while(entity)
        .count();
    let hex = |b: &u8| b.is_ascii_digit() || (b'a'..=b'f').contains(b);
    s > before
        && t[s - before - 1] == b'['
        && tail.get(after) == Some(&b':')
        && tail
            .get(after + 1..after + 10)
            .is_some_and(|m| m[..8].iter().all(hex) && m[8] == b']')
}

/// How many bytes of a mask's entity (capitals, digits, `_`) end `head`, at most
/// [`CREDENTIAL_LOOKBEHIND`] ([`in_mask_entity`] reads them and the byte before).
fn mask_entity_before(head: &[u8]) -> usize {
    head.iter()
        .rev()
        .take(CREDENTIAL_LOOKBEHIND)
        .take_while(|&&b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        .count()
}

/// How many bytes of a field's unquoted name (letters, digits, `_`, `-`, `.`) end `head`, at
/// most [`LABEL_LOOKBEHIND`].
fn name_before(head: &[u8]) -> usize {
    head.iter()
        .rev()
        .take(LABEL_LOOKBEHIND)
        .take_while(|&&b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        .count()
}

/// A mask (`[SECRET:...]`, `****`) or a template (`${DB_PASSWORD}`, `{{ secret }}`,
/// `<password>`, `%(password)s`) stands where a credential's value would be.
fn stand_in(v: &[u8]) -> bool {
    matches!(v.first(), Some(b'[' | b'*' | b'<'))
        || v.starts_with(b"${")
        || v.starts_with(b"{{")
        || v.starts_with(b"%(")
}

/// Whether a field's value under a credential's key is masked whole (see
/// [`super::detectors::secret_label`]): at most [`SECRET_MAX`] bytes, no placeholder, mask or
/// template.
pub(crate) fn secret_value(v: &[u8]) -> bool {
    !v.is_empty() && v.len() <= SECRET_MAX && !stand_in(v) && !placeholder(v.trim_ascii())
}

/// The span of a whole field value that a phone number's field name holds as a phone number
/// (see [`super::detectors::field_kind`]), white space around it left out: 7 to 15 digits
/// after an optional `+`, grouped by spaces, `-`, `.`, `/` or parentheses (`4915112345678`,
/// E.164 stored without its `+`; `030/1234567`). Not a date (`1985-03-15`), not one digit over
/// and over (`0000000`, a placeholder), not a number too long or short for its country after a
/// `+`.
pub(crate) fn labelled_phone(t: &[u8]) -> Option<(usize, usize)> {
    let (s, e) = trimmed(t)?;
    let v = &t[s..e];
    let body = v.strip_prefix(b"+").unwrap_or(v);
    if !body
        .first()
        .is_some_and(|&b| b.is_ascii_digit() || b == b'(')
        || !body
            .iter()
            .all(|&b| b.is_ascii_digit() || matches!(b, b' ' | b'-' | b'.' | b'/' | b'(' | b')'))
        || body.iter().filter(|&&b| b == b'(').count()
            != body.iter().filter(|&&b| b == b')').count()
    {
        return None;
    }
    let mut digits = body.iter().filter(|b| b.is_ascii_digit());
    let n = digits.clone().count();
    let first = digits.next()?;
    if !(7..=15).contains(&n) || digits.all(|d| d == first) || numeric_ymd(body).is_some() {
        return None;
    }
    (body.len() == v.len() || international_len(v)).then_some((s, e))
}

/// The span of a whole field value that an IBAN's field name holds as an IBAN, white space
/// around it left out: in any case (`de89370400440532013000`, which the patterns read only in
/// capitals), grouped as [`iban`] takes it.
pub(crate) fn labelled_iban(t: &[u8]) -> Option<(usize, usize)> {
    let (s, e) = trimmed(t)?;
    iban(&t[s..e]).then_some((s, e))
}

/// `t` without the ASCII white space around it, as a span; `None` if nothing is left.
fn trimmed(t: &[u8]) -> Option<(usize, usize)> {
    let s = t.iter().position(|b| !b.is_ascii_whitespace())?;
    let e = t.iter().rposition(|b| !b.is_ascii_whitespace())? + 1;
    Some((s, e))
}

/// The name of a labelled field's match `t[s..e]` (see [`labelled_value`]): the separator's
/// index and the name's bytes, when there is one; and the lowest index read to know (the
/// decision's reach before `s`: a few bytes, where the static [`LABEL_LOOKBEHIND`] would
/// chain the reaches of fields a line apart and leave long texts no cut point).
fn labelled_key(t: &[u8], s: usize, e: usize) -> (Option<(usize, &[u8])>, usize) {
    // A mask's entity (`[PHONE:4f1c9a2b]`) is no field's name (`in_mask_entity` reads back
    // over its capitals, digits and `_`, and the byte before).
    let before = mask_entity_before(t.get(..s).unwrap_or_default());
    let mut lo = s.saturating_sub(before + 1);
    if in_mask_entity(t, s) {
        return (None, lo);
    }
    let Some(v) = t.get(s..e) else {
        return (None, lo);
    };
    let Some(sep) = v.iter().position(|&b| matches!(b, b':' | b'=' | b'>')) else {
        return (None, lo);
    };
    let sep = s + sep;
    // The name: back from the separator over blanks, then a closing quote (escaped or not).
    let mut k = sep;
    while k > s && matches!(t[k - 1], b' ' | b'\t') {
        k -= 1;
    }
    lo = lo.min(k.saturating_sub(1));
    // (A quoted name, or `print_r`'s `[mobile] => ...`.)
    let key_quote = t[..k]
        .last()
        .copied()
        .filter(|&b| matches!(b, b'"' | b'\'' | b']'));
    // `>` ends an XML element's opening tag: its name right before it (`<phone>`,
    // `<ns:mobileNumber>`), nothing else.
    let tag = t[sep] == b'>';
    if tag && (k < sep || key_quote.is_some()) {
        return (None, lo);
    }
    let key = match key_quote {
        Some(close) => {
            let q = if close == b']' { b'[' } else { close };
            let mut end = k - 1;
            if end > 0 && t[end - 1] == b'\\' && close != b']' {
                end -= 1;
            }
            let open = t[..end]
                .iter()
                .rev()
                .take(LABEL_LOOKBEHIND)
                .position(|&b| b == q || b == b'\n');
            let Some(open) = open.map(|o| end - o - 1) else {
                return (None, lo.min(end.saturating_sub(LABEL_LOOKBEHIND)));
            };
            lo = lo.min(open);
            if t[open] != q {
                return (None, lo);
            }
            &t[open + 1..end]
        }
        None => {
            let n = name_before(&t[..k]);
            // (The byte that stopped the name, or the last one it may hold.)
            lo = lo.min(k.saturating_sub(n + 1));
            if tag {
                let (opens, read) = opens_tag(t, k - n);
                lo = lo.min(read);
                if !opens {
                    return (None, lo);
                }
            }
            &t[k - n..k]
        }
    };
    (Some((sep, key)), lo)
}

/// A phone number's or an IBAN's field name in a text, its separator and the first byte of its
/// value (`t[s..e]`, the automaton's match, whose last byte is the value's first): the value,
/// when the name is one `field_kind` reads as `kind` and the value is one read whole under it
/// ([`labelled_phone`], [`labelled_iban`]), as a JSON field of that name is.
///
/// The name is read back from the separator, not from `s` (the automaton's match starts at the
/// name's last word: `mobile_phone`): a quoted key to its opening quote (`"Mobile Phone"`), an
/// unquoted one over letters, digits, `_`, `-` and `.`. A quoted value runs to its closing
/// quote (escaped as the opening one was: `\"4915112345678\"` in JSON inside a JSON
/// string); an unquoted one over what a phone number is written with (`tel: 030 1234567 #
/// office`), or over letters and digits for an IBAN, and must not run on into a word.
fn labelled_value(t: &[u8], s: usize, e: usize, kind: FieldKind) -> Option<Verdict> {
    let (sep, key) = labelled_key(t, s, e).0?;
    // (The key without a backslash that escaped its opening quote.)
    let key = key.strip_suffix(b"\\").unwrap_or(key);
    if field_kind(std::str::from_utf8(key).ok()?) != Some(kind) {
        return None;
    }
    // The value: its first byte is the match's last.
    let start = e - 1;
    // (A custom pattern may end at its separator: then there is no value.)
    let opened = t
        .get(sep + 1..start)?
        .iter()
        .rev()
        .find(|&&b| b != b' ' && b != b'\t')
        .copied()
        .filter(|&b| b == b'"' || b == b'\'');
    let end = match opened {
        Some(q) => {
            let escaped = t.get(start.wrapping_sub(2)) == Some(&b'\\');
            let len = t[start..]
                .iter()
                .take(LABELLED_MAX + 1)
                .position(|&b| b == q || b == b'\\' || b == b'\n')?;
            let end = start + len;
            // Closed as it was opened: `"..."`, or `\"...\"`.
            let closed = match escaped {
                true => t[end] == b'\\' && t.get(end + 1) == Some(&q),
                false => t[end] == q,
            };
            closed.then_some(end)?
        }
        None => {
            let part = |b: u8| match kind {
                FieldKind::Phone => {
                    b.is_ascii_digit()
                        || matches!(b, b' ' | b'+' | b'-' | b'.' | b'/' | b'(' | b')')
                }
                FieldKind::Iban => b.is_ascii_alphanumeric(),
            };
            let len = t[start..]
                .iter()
                .take(LABELLED_MAX + 1)
                .take_while(|&&b| part(b))
                .count();
            // (Not a value that runs on into a word: `tel: 4915112345678abc`,
            // `?phone=4915112345678.jpg`; `030 1234567 (Büro)` does not.)
            let run = &t[start..start + len];
            let last_digit = run
                .iter()
                .rposition(u8::is_ascii_digit)
                .map_or(0, |i| i + 1);
            let runs_on = t.get(start + len).is_some_and(|&b| is_word(b))
                && !run[last_digit..].contains(&b' ');
            if len > LABELLED_MAX || runs_on {
                return None;
            }
            // (Not the punctuation that ends a sentence or a list: `tel: 030 1234567.`)
            let mut end = start + len;
            while end > start
                && !matches!(t[end - 1], b'0'..=b'9' | b')')
                && kind == FieldKind::Phone
            {
                end -= 1;
            }
            end
        }
    };
    let value = t.get(start..end)?;
    let (vs, ve) = match kind {
        FieldKind::Phone => labelled_phone(value)?,
        FieldKind::Iban => labelled_iban(value)?,
    };
    Verdict::span(start + vs, start + ve)
}

/// The most items of a list read after its first ([`list_items`])...
const LIST_ITEMS: usize = 64;
/// ... and the most bytes read from its first value on.
pub(crate) const LIST_MAX: usize = 2048;

/// The other items of a list under a phone number's or an IBAN's field name in a text, whose
/// first value ([`labelled_value`]'s) starts at `first`: a JSON or Python list (`"phones":
/// ["4915112345678", "4915112345679"]`, over lines too) or a YAML one (`phones:` then
/// `  - 4915112345678` on each line, at the first item's indentation). Each later item's
/// value as a span, in order, not yet validated; and the end of what was read (past the
/// bytes that ended the list: the decision's reach). No item when
/// the first value opens no list. Items are quoted as JSON strings, escaped as in JSON inside
/// a JSON string, quoted with `'`, or bare; the list ends at the first byte that does not go
/// on with it (`]`, a line that is no item), after [`LIST_ITEMS`] items or [`LIST_MAX`]
/// bytes.
pub(crate) fn list_items(t: &[u8], first: usize) -> (Vec<(usize, usize)>, usize) {
    let mut items = Vec::new();
    // Back from the first value over its quote (escaped or not) and white space to the list's
    // opening: `[`, or a YAML item's `-` after its line's indentation.
    let mut at = first;
    if at > 0 && matches!(t[at - 1], b'"' | b'\'') {
        at -= 1;
        if at > 0 && t[at - 1] == b'\\' {
            at -= 1;
        }
    }
    let mut p = at;
    while p > 0 && matches!(t[p - 1], b' ' | b'\t' | b'\r' | b'\n') {
        p -= 1;
    }
    let block = match p.checked_sub(1).map(|i| t[i]) {
        Some(b'[') => None,
        Some(b'-') => {
            let dash = p - 1;
            let indent = t[..dash]
                .iter()
                .rev()
                .take_while(|&&b| b == b' ' || b == b'\t')
                .count();
            let line = dash - indent;
            if line == 0 || t[line - 1] != b'\n' {
                return (items, first);
            }
            Some(&t[line..dash])
        }
        _ => return (items, first),
    };
    let limit = t.len().min(first.saturating_add(LIST_MAX));
    // The end of what was read (the list's end depends on the bytes after its last item).
    let mut seen = first;
    let mut see = |upto: usize| seen = seen.max(upto.min(t.len()));
    for n in 0..=LIST_ITEMS {
        let (s, e, after) = match list_item(t, at, limit, block.is_none()) {
            Ok(item) => item,
            Err(read) => {
                see(read);
                break;
            }
        };
        // (An unquoted item's end is the byte that stopped it.)
        see(after + 1);
        if n > 0 {
            items.push((s, e));
        }
        // On to the next item.
        let mut i = after;
        let ws = |i: &mut usize, blanks: &[u8]| {
            while *i < limit && blanks.contains(&t[*i]) {
                *i += 1;
            }
        };
        match block {
            None => {
                ws(&mut i, b" \t\r\n");
                see(i + 1);
                if t.get(i) != Some(&b',') || i >= limit {
                    break;
                }
                i += 1;
                ws(&mut i, b" \t\r\n");
            }
            Some(indent) => {
                ws(&mut i, b" \t\r");
                see(i + 1);
                if t.get(i) != Some(&b'\n') {
                    break;
                }
                i += 1;
                see(i + indent.len() + 2);
                if !t.get(i..limit).is_some_and(|r| r.starts_with(indent)) {
                    break;
                }
                i += indent.len();
                if t.get(i) != Some(&b'-') || !matches!(t.get(i + 1), Some(b' ' | b'\t')) {
                    break;
                }
                i += 1;
                ws(&mut i, b" \t");
            }
        }
        see(i + 1);
        at = i;
    }
    (items, seen)
}

/// One item of a list read by [`list_items`], from `i` (its quote, escaped or not, or its
/// first byte): its value's span and where it ends (past its closing quote); or, when it is
/// none, the end of what was read to know.
fn list_item(t: &[u8], i: usize, limit: usize, flow: bool) -> Result<(usize, usize, usize), usize> {
    let mut k = i;
    let escaped = t.get(k) == Some(&b'\\');
    if escaped {
        k += 1;
    }
    let quote = t.get(k).copied().filter(|&b| b == b'"' || b == b'\'');
    if quote.is_some() {
        k += 1;
    } else if escaped {
        return Err(k + 1);
    }
    let rest = t.get(k..limit).ok_or(k + 1)?;
    match quote {
        Some(q) => {
            let close = k + rest
                .iter()
                .position(|&b| b == q || b == b'\n')
                .ok_or(limit)?;
            // Closed as it was opened: `"..."`, or `\"...\"`.
            let backslash = close > k && t[close - 1] == b'\\';
            if t[close] == q && backslash == escaped {
                Ok((k, close - usize::from(escaped), close + 1))
            } else {
                Err(close + 1)
            }
        }
        None => {
            let end = k + rest
                .iter()
                .position(|&b| matches!(b, b'\n' | b'\r') || (flow && matches!(b, b',' | b']')))
                .ok_or(limit)?;
            if end > k {
                Ok((k, end, end))
            } else {
                Err(end + 1)
            }
        }
    }
}

/// Whether an XML element's name starting at `at` follows its `<`, directly or after a
/// namespace's prefix (`<ns:phone`; the name read back stopped at that `:`); and the lowest
/// index read.
fn opens_tag(t: &[u8], at: usize) -> (bool, usize) {
    let Some(at) = at.checked_sub(1) else {
        return (false, 0);
    };
    match t[at] {
        b'<' => (true, at),
        b':' => {
            let prefix = name_before(&t[..at]);
            let read = at.saturating_sub(prefix + 1);
            (prefix > 0 && at > prefix && t[read] == b'<', read)
        }
        _ => (false, at),
    }
}

/// Where a value that runs from `start` ends: past every byte from `end` on that `keep`
/// (given its offset) accepts, at most [`SECRET_MAX`] bytes after `start`.
fn value_end(t: &[u8], start: usize, mut end: usize, keep: impl Fn(usize) -> bool) -> usize {
    while end - start < SECRET_MAX && end < t.len() && keep(end) {
        end += 1;
    }
    end
}

/// The password of `scheme://user:password@host`, whose first byte the automaton's match
/// ends with (`e - 1`): up to the `@` that ends the user information (RFC 3986: unreserved,
/// percent-encoded, sub-delims and `:`). `http://host:8080/` has no `@` there: a port.
fn url_credential(t: &[u8], e: usize) -> Option<Verdict> {
    let start = e.checked_sub(1)?;
    let userinfo = |b: u8| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=:".contains(&b);
    let end = value_end(t, start, e, |i| userinfo(t[i]));
    (t.get(end) == Some(&b'@')).then_some(Verdict {
        start,
        end,
        base: None,
    })
}

/// The token of `Bearer <token>` or `Basic <token>`, whose first byte the automaton's match
/// ends with (`e - 1`).
fn auth_token(t: &[u8], e: usize) -> Option<Verdict> {
    let start = e.checked_sub(1)?;
    let token68 = |b: u8| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b);
    let end = value_end(t, start, start, |i| token68(t[i]));
    let mut end = value_end(t, start, end, |i| t[i] == b'=');
    // What follows ends the token: a blank, a quote, punctuation that closes or separates
    // (`Bearer abc$def` is a template or something else).
    let ends = t
        .get(end)
        .is_none_or(|&b| !b.is_ascii_graphic() || b"\"'`,;)]}>\\&<".contains(&b));
    // A full stop after the token ends the sentence.
    while end > start && t[end - 1] == b'.' {
        end -= 1;
    }
    let token = &t[start..end];
    let wordlike =
        token.iter().all(u8::is_ascii_alphabetic) && !token[1..].iter().any(u8::is_ascii_uppercase);
    // A token of a service the built-in detectors know is theirs (`Bearer eyJ...` is a
    // JWT, `Bearer ghp_...` a GitHub token): they find it after this candidate.
    const KNOWN: &[&[u8]] = &[
        b"eyJ",
        b"AKIA",
        b"ASIA",
        b"ABIA",
        b"ACCA",
        b"ghp_",
        b"gho_",
        b"ghu_",
        b"ghs_",
        b"ghr_",
        b"github_pat_",
        b"xox",
        b"AIza",
        b"sk_",
        b"rk_",
        b"sk-",
        b"glpat-",
        b"npm_",
        b"pypi-",
    ];
    // (Also under Markdown emphasis, `Bearer _AKIA..._`.)
    let bare = &token[token.iter().take_while(|&&b| b == b'_').count()..];
    let known = KNOWN.iter().any(|p| bare.starts_with(p));
    if ends && token.len() >= 12 && !wordlike && !known {
        Verdict::span(start, end)
    } else {
        None
    }
}

/// The value of a command-line credential whose first byte the automaton's match ends with.
fn cli_credential(t: &[u8], e: usize) -> Option<Verdict> {
    let start = e.checked_sub(1)?;
    let quote = prev(t, start).filter(|&b| b == b'"' || b == b'\'');
    let end = value_end(t, start, start, |i| match quote {
        Some(q) => t[i] != q && t[i] != b'\n',
        None => secret_byte(t[i]),
    });
    let value = &t[start..end];
    if value.first() == Some(&b'$') || stand_in(value) || placeholder(value) {
        return None;
    }
    // `-u user:...`: a user and a group are no password (`docker run -u 1000:1000`,
    // `--user www-data:www-data`).
    let colon = (start - usize::from(quote.is_some())).checked_sub(1)?;
    if t[colon] == b':' {
        let user_len = t[..colon]
            .iter()
            .rev()
            .take_while(|&&b| b.is_ascii_alphanumeric() || b"._%+@-".contains(&b))
            .count();
        let user = &t[colon - user_len..colon];
        let numeric = |x: &[u8]| !x.is_empty() && x.iter().all(u8::is_ascii_digit);
        if user == value || (numeric(user) && numeric(value)) {
            return None;
        }
    }
    Verdict::span(start, end)
}

/// A prefixed key, from the automaton's match (its shortest form) to the last key byte.
fn token(t: &[u8], s: usize, e: usize) -> Option<Verdict> {
    let end = value_end(t, s, e, |i| b64url(t[i]));
    if t.get(end).is_some_and(|&b| b64url(b)) {
        return None;
    }
    Verdict::span(s, end)
}

/// A prefixed key whose bytes mix capitals, small letters and digits.
fn random_token(t: &[u8], s: usize, e: usize) -> Option<Verdict> {
    let v = token(t, s, e)?;
    let key = &t[v.start..v.end];
    let has = |f: fn(&u8) -> bool| key.iter().any(f);
    let mixed = has(u8::is_ascii_uppercase) && has(u8::is_ascii_lowercase);
    (mixed && has(u8::is_ascii_digit)).then_some(v)
}

fn credential(t: &[u8], s: usize, e: usize) -> Option<Verdict> {
    // A mask's entity (`[SECRET:4f1c9a2b]`, `[GOOGLE_API_KEY:4f1c9a2b]`) is no credential's
    // name.
    if in_mask_entity(t, s) {
        return None;
    }
    let v = t.get(s..e)?;
    let sep_at = v.iter().position(|&b| b == b':' || b == b'=')?;
    let quoted_key = v[..sep_at].iter().any(|&b| b == b'"' || b == b'\'');
    let mut i = sep_at + 1;
    while v.get(i).is_some_and(|&b| b == b' ' || b == b'\t') {
        i += 1;
    }
    let mut quoted = false;
    while let Some(&b) = v.get(i).filter(|&&b| b == b'\\' || b == b'"' || b == b'\'') {
        quoted |= b != b'\\';
        i += 1;
    }
    let start = s + i;
    // The value runs on past the pattern's first byte, to a blank, a quote or a separator.
    let mut end = value_end(t, start, e, |i| {
        secret_byte(t[i]) && !(matches!(t[i], b'&' | b';' | b',') && separates(t, i))
    });
    // (An escaped closing quote: `\"hunter2\"` in JSON inside a JSON string; unquoted, the
    // end of what holds it: `{"api_key": 12345}`.)
    let closing = |b: u8| b == b'\\' || (!quoted && matches!(b, b')' | b']' | b'}'));
    while end > start && closing(t[end - 1]) {
        end -= 1;
    }
    let value = t.get(start..end)?;
    if value.is_empty() || !secret_start(value[0]) || stand_in(value) || placeholder(value) {
        return None;
    }
    if v[sep_at] == b':' && !quoted && !quoted_key {
        // Prose (`Your password: must be...`) writes a name and a colon too: there the key
        // must start its line (YAML, a form's dump) or the value look like no word.
        let mut k = s;
        while k > 0 && s - k < CREDENTIAL_LOOKBEHIND && (is_word(t[k - 1]) || t[k - 1] == b'-') {
            k -= 1;
        }
        while k > 0 && matches!(t[k - 1], b' ' | b'\t' | b'-') {
            k -= 1;
        }
        // A name of two words written apart (`Access token: see the vault`) is a form's
        // or prose's, not a YAML key's, wherever it stands.
        let starts_line =
            (k == 0 || t[k - 1] == b'\n') && !v[..sep_at].trim_ascii().contains(&b' ');
        let wordlike = value.iter().all(u8::is_ascii_alphabetic)
            && !value[1..].iter().any(u8::is_ascii_uppercase);
        if !starts_line && wordlike {
            return None;
        }
    }
    Verdict::span(start, end)
}

impl Validator {
    /// How far past the automaton's match this validator may extend a value.
    pub(crate) fn extent(self) -> usize {
        match self {
            Validator::PemBlock => PEM_MAX,
            Validator::Jwt => JWT_MAX,
            Validator::Credential
            | Validator::UrlCredential
            | Validator::AuthToken
            | Validator::CliCredential
            | Validator::Token
            | Validator::RandomToken => SECRET_MAX,
            Validator::LabelledPhone | Validator::LabelledIban => LABELLED_EXTENT,
            _ => 0,
        }
    }

    /// Whether a rejected match of this validator is a structure whose parts are no values
    /// of their own (the digit groups of an IBAN that fails its check), so that candidates
    /// wholly inside it are skipped. Not so for lead-ins (a name and its separator, a URL's
    /// `://host:`, an authorization scheme: `http://10.1.2.3:8080` holds an address), nor
    /// for phone numbers, whose punctuation and lengths are loose enough that what fails as
    /// one may hold another value (`PESEL (05322583730)`).
    pub(crate) fn hides_fragments(self) -> bool {
        !matches!(
            self,
            Validator::Credential
                | Validator::UrlCredential
                | Validator::AuthToken
                | Validator::CliCredential
                | Validator::Phone
                | Validator::LabelledPhone
                | Validator::LabelledIban
        )
    }

    /// How far before the automaton's match this validator reads (two bytes at least).
    pub(crate) fn lookbehind(self) -> usize {
        match self {
            Validator::Ipv4 => IPV4_LOOKBEHIND,
            Validator::Credential => CREDENTIAL_LOOKBEHIND,
            Validator::LabelledPhone | Validator::LabelledIban => LABEL_LOOKBEHIND,
            _ => 2,
        }
    }

    /// The bytes the check of the candidate `t[s..e]` reads (`lo..hi`), for validators that
    /// know them more closely than [`lookbehind`](Self::lookbehind) and
    /// [`extent`](Self::extent) bound them: a labelled field's name is read back only to its
    /// start, its value at most [`LABELLED_MAX`] bytes on (and a mask's entity over its
    /// capitals).
    pub(crate) fn reach(self, t: &[u8], s: usize, e: usize) -> Option<(usize, usize)> {
        match self {
            Validator::LabelledPhone | Validator::LabelledIban => Some((
                labelled_key(t, s, e).1,
                (e + LABELLED_MAX + 3).max(s + CREDENTIAL_LOOKBEHIND + 12),
            )),
            _ => None,
        }
    }

    /// What the field whose name this validator reads in a text holds (see [`list_items`]).
    pub(crate) fn labelled_kind(self) -> Option<FieldKind> {
        match self {
            Validator::LabelledPhone => Some(FieldKind::Phone),
            Validator::LabelledIban => Some(FieldKind::Iban),
            _ => None,
        }
    }

    /// Checks the candidate `text[s..e]` (an automaton match, so on char boundaries).
    pub(crate) fn check(self, text: &str, s: usize, e: usize) -> Option<Verdict> {
        let t = text.as_bytes();
        let v = t.get(s..e)?;
        if v.is_empty() {
            return None;
        }
        let ok = |b: bool| if b { Verdict::span(s, e) } else { None };
        match self {
            Validator::None => Verdict::span(s, e),
            Validator::Luhn => ok(luhn(&digit_vec(v))),
            Validator::Mod97 => {
                ok(mod97(v.iter().copied().filter(u8::is_ascii_alphanumeric)) == Some(1))
            }
            Validator::Mod11 => ok(mod11(&digit_vec(v))),
            Validator::TokenEnd => ok(token_ends(t, e)),
            Validator::SlackToken => {
                ok(token_ends(t, e) && v.iter().filter(|&&b| b == b'-').count() >= 2)
            }
            Validator::PemBlock => pem(t, s, e),
            Validator::Credential => credential(t, s, e),
            Validator::UrlCredential => url_credential(t, e),
            Validator::AuthToken => auth_token(t, e),
            Validator::CliCredential => cli_credential(t, e),
            Validator::Token => token(t, s, e),
            Validator::RandomToken => random_token(t, s, e),
            Validator::Jwt => jwt(t, s),
            Validator::Iban => ok(iban(v)),
            Validator::Email => email(t, s, e),
            Validator::ItCf => ok(it_cf(v)),
            Validator::Nino => ok(nino(v)),
            Validator::EsNie => {
                let compact: Bytes = v.iter().copied().filter(|&b| b != b'-').collect();
                if compact.len() != 9 || !compact[1..8].iter().all(u8::is_ascii_digit) {
                    return None;
                }
                let lead = u32::from(compact[0].wrapping_sub(b'X'));
                let ds = digit_vec(&compact[1..8]);
                ok(lead <= 2 && dni_letter(lead * 10_000_000 + num(&ds)) == compact[8])
            }
            Validator::EsDni => {
                let ds = digit_vec(v);
                ok(ds.len() == 8 && v.last().is_some_and(|&l| dni_letter(num(&ds)) == l))
            }
            Validator::Mac => mac(t, s, e),
            Validator::Ipv6 => ipv6(t, s, e),
            Validator::Ipv4 => ipv4(t, s, e),
            Validator::Card => {
                let ds = digit_vec(v);
                ok((13..=19).contains(&ds.len())
                    && card_groups(v)
                    && card_issuer(&ds)
                    && luhn(&ds)
                    && !continues_numeric(t, e, b".-"))
            }
            Validator::FrNir => ok(nir(v)),
            Validator::Ssn => {
                let ds = digit_vec(v);
                if !ssn(&ds) || continues_numeric(t, e, b".-/") || preceded_numeric(t, s, b".-/") {
                    None
                } else if v.contains(&b'-') {
                    Verdict::span(s, e)
                } else {
                    Verdict::weak(s, e, if v.contains(&b' ') { 0.45 } else { 0.3 })
                }
            }
            Validator::SePnr => {
                if !se_pnr(&digit_vec(v)) || continues_numeric(t, e, b".-/") {
                    None
                } else if v.iter().any(|b| !b.is_ascii_digit()) {
                    Verdict::span(s, e)
                } else {
                    Verdict::weak(s, e, 0.35)
                }
            }
            Validator::Dob => {
                if continues_numeric(t, e, b".-/:") || preceded_numeric(t, s, b".-/:") {
                    return None;
                }
                let text_v = std::str::from_utf8(v).ok()?;
                ok(numeric_ymd(v).is_some() || named_date(text_v).is_some())
            }
            Validator::Phone => phone(t, s, e),
            Validator::LabelledPhone => labelled_value(t, s, e, FieldKind::Phone),
            Validator::LabelledIban => labelled_value(t, s, e, FieldKind::Iban),
            Validator::NlBsn => {
                let ds = digit_vec(v);
                ok(ds.len() == 9
                    && num(&ds[..8]) != 0
                    && mod11(&ds)
                    && !continues_numeric(t, e, b".-/"))
            }
            Validator::PlPesel => ok(pesel(&digit_vec(v)) && !continues_numeric(t, e, b".-/")),
            Validator::DeTaxId => ok(de_tax_id(&digit_vec(v)) && !continues_numeric(t, e, b".-/")),
            Validator::Passport => {
                ok(!continues_numeric(t, e, b".-/") && v.iter().any(u8::is_ascii_digit))
            }
            Validator::Bic => {
                ok(v.len() >= 8 && is_country(&v[4..6]) && v[6] != b'0' && v[7] != b'O')
            }
        }
    }

    /// The value as it is hashed into its pseudonym: the same person's data written
    /// differently gives the same pseudonym.
    pub(crate) fn normalize(self, v: &str) -> String {
        let mut out = String::with_capacity(v.len());
        self.normalize_into(v, &mut out);
        out
    }

    /// [`Validator::normalize`] appended to `out` (the engine reuses one buffer).
    pub(crate) fn normalize_into(self, v: &str, out: &mut String) {
        let start = out.len();
        // Byte filters: a byte of a multi-byte char is never ASCII, so filtering bytes is
        // filtering chars.
        let mut keep = |f: fn(&u8) -> bool, map: fn(u8) -> u8| {
            out.extend(v.bytes().filter(f).map(|b| char::from(map(b))));
        };
        match self {
            Validator::Email => {
                let v = decoded_address(v);
                if v.is_ascii() {
                    out.push_str(&v);
                    out[start..].make_ascii_lowercase();
                } else {
                    out.extend(v.chars().flat_map(char::to_lowercase));
                }
            }
            Validator::Luhn
            | Validator::Mod11
            | Validator::Card
            | Validator::Ssn
            | Validator::SePnr
            | Validator::NlBsn
            | Validator::PlPesel
            | Validator::DeTaxId => keep(u8::is_ascii_digit, |b| b),
            Validator::Phone | Validator::LabelledPhone => {
                // (`%2B4930...` is `+4930...`: the `2` of the encoded `+` is no digit of it.)
                let number = after_encoded_plus(v.as_bytes()).unwrap_or(v.as_bytes());
                out.extend(
                    number
                        .iter()
                        .filter(|b| b.is_ascii_digit())
                        .map(|&b| char::from(b)),
                );
                if v.starts_with("00") && out[start..].starts_with("00") {
                    out.replace_range(start..start + 2, "");
                }
            }
            Validator::Mod97
            | Validator::Iban
            | Validator::LabelledIban
            | Validator::Bic
            | Validator::ItCf
            | Validator::Nino
            | Validator::EsNie
            | Validator::EsDni
            | Validator::FrNir
            | Validator::Passport => keep(u8::is_ascii_alphanumeric, |b| b.to_ascii_uppercase()),
            // Each byte in two digits: `0:1a:...` and `00:1A:...` are one address.
            Validator::Mac if !v.contains('.') => {
                for g in v.split([':', '-']) {
                    let hex = || g.bytes().filter(u8::is_ascii_hexdigit);
                    if hex().count() == 1 {
                        out.push('0');
                    }
                    out.extend(hex().map(|b| char::from(b.to_ascii_lowercase())));
                }
            }
            Validator::Mac => keep(u8::is_ascii_hexdigit, |b| b.to_ascii_lowercase()),
            // An address the parser accepts is written back as it was (four decimal octets
            // without leading zeros); one it rejects is kept as is.
            Validator::Ipv4 => out.push_str(v),
            Validator::Ipv6 => match Ipv6Addr::from_str(v) {
                Ok(a) => out.push_str(&a.to_string()),
                Err(_) => {
                    out.push_str(v);
                    out[start..].make_ascii_lowercase();
                }
            },
            // As `numeric_date` writes it, without a `String` of its own per date.
            Validator::Dob => match numeric_ymd(v.as_bytes()) {
                Some((y, m, d)) => {
                    push_padded(out, y, 4);
                    out.push('-');
                    push_padded(out, m, 2);
                    out.push('-');
                    push_padded(out, d, 2);
                }
                None => match named_date(v) {
                    Some(d) => out.push_str(&d),
                    None => keep(u8::is_ascii_digit, |b| b),
                },
            },
            Validator::None
            | Validator::TokenEnd
            | Validator::SlackToken
            | Validator::PemBlock
            | Validator::Jwt
            | Validator::Credential
            | Validator::UrlCredential
            | Validator::AuthToken
            | Validator::CliCredential
            | Validator::Token
            | Validator::RandomToken => out.push_str(v),
        }
    }
}

#[cfg(test)]
pub(crate) mod checks {
    //! Check-digit generators for the corpus and the tests.
    use super::*;

    /// Reduced at every character, the textbook way.
    fn mod97_reference(s: &[u8]) -> Option<u32> {
        let mut r = 0u32;
        for &c in s {
            let v = match c {
                b'0'..=b'9' => u32::from(c - b'0'),
                b'A'..=b'Z' | b'a'..=b'z' => u32::from(c.to_ascii_uppercase() - b'A') + 10,
                _ => return None,
            };
            r = if v >= 10 {
                (r * 100 + v) % 97
            } else {
                (r * 10 + v) % 97
            };
        }
        Some(r)
    }

    proptest::proptest! {
        #[test]
        fn mod97_equals_the_reference(s in "[0-9A-Za-z]{0,120}|[0-9A-Z ]{0,40}|Z{0,80}") {
            proptest::prop_assert_eq!(mod97(s.bytes()), mod97_reference(s.as_bytes()));
        }
    }

    #[test]
    fn iban_lengths_are_sorted_for_the_binary_search() {
        assert!(IBAN_LENGTHS.windows(2).all(|w| w[0].0 < w[1].0));
    }

    pub fn luhn_complete(prefix: &[u32]) -> u32 {
        (0..10)
            .find(|&c| {
                let mut v = prefix.to_vec();
                v.push(c);
                luhn(&v)
            })
            .unwrap_or(0)
    }
    pub fn iban_check(country: &str, bban: &str) -> String {
        let s = format!("{bban}{country}00");
        let r = mod97(s.bytes()).unwrap_or(0);
        format!("{:02}", 98 - r)
    }
    pub fn de_tax_check(ds: &[u32]) -> u32 {
        let mut product = 10;
        for &d in ds {
            let mut sum = (d + product) % 10;
            if sum == 0 {
                sum = 10;
            }
            product = (2 * sum) % 11;
        }
        (11 - product) % 10
    }
    pub fn pesel_check(ds: &[u32]) -> u32 {
        const W: [u32; 10] = [1, 3, 7, 9, 1, 3, 7, 9, 1, 3];
        let sum: u32 = ds.iter().zip(W).map(|(d, w)| d * w).sum();
        (10 - sum % 10) % 10
    }
    pub fn nir_key(first13: u64) -> u64 {
        97 - first13 % 97
    }
    pub fn cf_check(v: &[u8]) -> u8 {
        const ODD: [u32; 26] = [
            1, 0, 5, 7, 9, 13, 15, 17, 19, 21, 2, 4, 18, 20, 11, 3, 6, 8, 12, 14, 16, 10, 22, 25,
            24, 23,
        ];
        let mut sum = 0;
        for (i, &c) in v.iter().enumerate() {
            let k = if c.is_ascii_digit() {
                (c - b'0') as usize
            } else {
                (c - b'A') as usize
            };
            sum += if i % 2 == 0 { ODD[k] } else { k as u32 };
        }
        b'A' + (sum % 26) as u8
    }
    pub fn dni(n: u32) -> char {
        dni_letter(n) as char
    }
    pub fn bsn_ok(ds: &[u32]) -> bool {
        mod11(ds)
    }
    pub fn is_de_tax(ds: &[u32]) -> bool {
        de_tax_id(ds)
    }
    pub fn is_iban(v: &str) -> bool {
        iban(v.as_bytes())
    }
}
