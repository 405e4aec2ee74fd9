//! Patterns searched beside the union automaton: the e-mail pattern from each `@` ([`Side`]),
//! the names of fields read whole (phone numbers, IBANs) from each `:`, `=` and `>` ([`Labels`]).
//!
//! Why it is not in the union automaton: its local part `[A-Za-z0-9._%+'-]{0,63}` may start
//! after any `+`, `.`, `%` or `-`, and the lazy DFA of the union has to track every such start
//! (up to 64) together with every other bounded pattern in progress. On text that keeps many
//! of them in progress at once, base64 above all (letters, digits, `+`, `/`), the states are
//! products of those counters: the DFA builds a new state at almost every byte, its cache
//! fills and is cleared again and again, and the scan falls to ~1 MB/s (the union without this
//! one pattern runs at several hundred MB/s on the same text, measured by the `base64_json`
//! workload of `benches/redact.rs`).
//!
//! Every e-mail match contains an `@` or a percent-encoded one (`%40`), at most
//! [`EMAIL_LOCAL_MAX`] characters after its start ([`EMAIL_LOCAL_MAX_WIDE`] when it holds
//! any outside ASCII) (the local part holds no `@`; it may hold
//! `%40`, and the match then takes the last one before a domain). So [`Side::find`] looks
//! for the next `@` or `%40` (memchr), walks back over local-part characters (ASCII ones of
//! [`email_local`], two-byte ones outside ASCII) to the leftmost
//! start allowed there (an ASCII letter or digit after a word boundary), and runs the
//! pattern anchored at that start. The domain part does not depend on where the local part
//! starts, so if that start does not match, no start before this `@` does, and the search
//! moves to the next one. The result is the leftmost-first match of the pattern from the
//! search position, as the union's search would find it; the engine merges it with the
//! union's matches by start, then pattern order (property-tested against the union automaton
//! with the pattern inside).

use regex_automata::hybrid;
use regex_automata::util::syntax;
use regex_automata::{Anchored, Input};

use super::detectors::{
    EMAIL_LOCAL_MAX, EMAIL_LOCAL_MAX_WIDE, LABEL_NAMES, LABEL_SUFFIXES, email_local,
};
use super::validate::{in_mask_entity, is_word};

/// The offset of the first `@` or `%40` (a percent-encoded `@`) in `hay`.
pub(super) fn next_at(hay: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = memchr::memchr2(b'@', b'%', hay.get(from..)?) {
        let i = from + i;
        if hay[i] == b'@' || hay[i + 1..].starts_with(b"40") {
            return Some(i);
        }
        from = i + 1;
    }
    None
}

/// The length of the character before `x` when the pattern's local part can hold it: a
/// byte of [`email_local`], or a character of two bytes in UTF-8 (the validator then takes
/// only letters and digits among them).
fn local_char_before(hay: &[u8], x: usize) -> Option<usize> {
    let b = *hay.get(x.checked_sub(1)?)?;
    if b < 0x80 {
        return email_local(b).then_some(1);
    }
    let lead = *hay.get(x.checked_sub(2)?)?;
    ((0xC2..=0xDF).contains(&lead) && (b & 0xC0) == 0x80).then_some(2)
}

/// The automaton of patterns searched beside the union, run anchored where a search from an
/// `@` or a separator points.
fn side_regex(
    sources: &[&str],
    syntax: syntax::Config,
    dfa: hybrid::dfa::Config,
) -> Result<hybrid::regex::Regex, String> {
    hybrid::regex::Regex::builder()
        .syntax(syntax)
        .dfa(dfa)
        .build_many(sources)
        .map_err(|e| e.to_string())
}

/// The e-mail pattern (see the module docs) and its global pattern id.
pub(super) struct Side {
    pub(super) pid: u32,
    re: hybrid::regex::Regex,
    max_len: usize,
}

impl Side {
    pub(super) fn new(
        pid: u32,
        source: &str,
        max_len: usize,
        syntax: syntax::Config,
        dfa: hybrid::dfa::Config,
    ) -> Result<Side, String> {
        let re = side_regex(&[source], syntax, dfa)?;
        Ok(Side { pid, re, max_len })
    }

    pub(super) fn create_cache(&self) -> hybrid::regex::Cache {
        self.re.create_cache()
    }

    /// The leftmost-first match of the pattern starting at or after `pos` and ending by
    /// `end`: what the pattern's search over `pos..end` finds, reading ~64 bytes before each
    /// `@` and the domain after it.
    pub(super) fn find(
        &self,
        cache: &mut hybrid::regex::Cache,
        hay: &[u8],
        pos: usize,
        end: usize,
    ) -> Option<(usize, usize)> {
        // The next `@` or `%40` is searched from `from`; no match starts in `pos..floor`.
        let (mut from, mut floor) = (pos, pos);
        while from < end {
            let at = from + next_at(hay.get(from..end)?)?;
            // The local part before this `@`: at most EMAIL_LOCAL_MAX characters (letters
            // outside ASCII count as one: `josé@`), from `floor` on (a start before the last
            // `@` would hold it; a local part may hold a `%40`). (One more for a `_` the
            // pattern's widened edge takes in before it.)
            let (mut x, mut chars) = (at, 0);
            while x > floor && chars <= EMAIL_LOCAL_MAX {
                match local_char_before(hay, x) {
                    Some(len) if x - len >= floor => x -= len,
                    _ => break,
                }
                chars += 1;
            }
            // Where the pattern can start: an ASCII letter or digit after a word boundary,
            // or a `_` before one (its widened edge, see `Edges` in the engine).
            let alnum = |i: usize| hay.get(i).is_some_and(u8::is_ascii_alphanumeric);
            let start = (x..at).find(|&s| {
                // (Characters outside ASCII: half as many, see `EMAIL_PATTERN`.)
                let fits = |edge: usize| {
                    let l = &hay[s + edge..at];
                    match std::str::from_utf8(l) {
                        Ok(l) if l.is_ascii() => l.len() <= EMAIL_LOCAL_MAX,
                        Ok(l) => l.chars().count() <= EMAIL_LOCAL_MAX_WIDE,
                        Err(_) => false,
                    }
                };
                (alnum(s) && (s == 0 || !is_word(hay[s - 1])) && fits(0))
                    || (hay[s] == b'_' && alnum(s + 1) && fits(1))
            });
            if let Some(s) = start {
                let input = Input::new(hay)
                    .span(s..end.min(s.saturating_add(self.max_len)))
                    .anchored(Anchored::Yes);
                // No match, or (never with this configuration) a search error.
                if let Some(m) = self.re.try_search(cache, &input).ok().flatten() {
                    return Some((m.start(), m.end()));
                }
            }
            from = at + 1;
            if hay[at] == b'@' {
                floor = from;
            }
        }
        None
    }
}

/// The starts of the names that may end before the `:`, `=` or `>` at `j` in a match of a labelled
/// field's pattern (see [`Labels`]), into `starts` (unordered), none if no match can hold this
/// separator.
///
/// The patterns' parts around the separator are read greedily (a blank, a quote or a
/// backslash is never the byte that follows it there): before it, up to two blanks, a quote
/// and a backslash, then the name: a word of [`LABEL_NAMES`] in any case, then maybe a dot,
/// a `_`, `-` or blank and a word of [`LABEL_SUFFIXES`], then maybe a plural `s` and a dot
/// (`Tel.-Nr.:`); after it, up to two blanks, maybe a list's opening (`[` and up to 32
/// bytes of white space, or a line break, up to 8 blanks, `-` and one or two blanks), a
/// backslash, a quote and a value's first byte, before `end`. Every start of a match
/// holding this separator is among those found. Separators inside a pseudonym's mask
/// (`[PHONE:4f1c9a2b]`) have none: the validators refuse such candidates (and the closure
/// rescan reads every mask again).
///
/// Asked for every `:`, `=` and `>` of a text (each member of JSON read as text): most are passed
/// over after a few bytes, by the last two letters before them ([`ends_label`]) and the first
/// byte of the value (a letter only after `iban`).
#[inline]
fn label_starts(hay: &[u8], j: usize, end: usize, starts: &mut Vec<usize>) {
    let mut k = j;
    let mut blanks = 0;
    while blanks < 2 && k > 0 && matches!(hay[k - 1], b' ' | b'\t') {
        k -= 1;
        blanks += 1;
    }
    // (A closing quote, or the `]` of `print_r`'s `[mobile] => ...`.)
    if k > 0 && matches!(hay[k - 1], b'"' | b'\'' | b']') {
        k -= 1;
    }
    if k > 0 && hay[k - 1] == b'\\' {
        k -= 1;
    }
    // (An abbreviation's dot: `Tel.:`.)
    if k > 0 && hay[k - 1] == b'.' {
        k -= 1;
    }
    // (No name or suffix ends with an `s`: one there is a plural.)
    let e = match hay[..k].last() {
        Some(&b) if b | 0x20 == b's' => k - 1,
        _ => k,
    };
    if e < 2 {
        return;
    }
    let (a, b) = (hay[e - 2], hay[e - 1]);
    let iban = (a | 0x20, b | 0x20) == (b'a', b'n');
    if !(iban || ends_label(a, b)) {
        return;
    }
    let mut i = j + 1;
    // (A hash's arrow: `=>`.)
    if hay[j] == b'=' && i < end && hay[i] == b'>' {
        i += 1;
    }
    let blanks = |i: &mut usize, most: usize, set: &[u8]| {
        let mut n = 0;
        while n < most && *i < end && set.contains(&hay[*i]) {
            *i += 1;
            n += 1;
        }
        n
    };
    blanks(&mut i, 2, b" \t");
    // A list's opening: `[` and white space, or a line break, a YAML item's indentation,
    // `-` and a blank or two.
    if i < end && hay[i] == b'[' {
        i += 1;
        blanks(&mut i, 32, b" \t\r\n");
    } else if i < end && matches!(hay[i], b'\r' | b'\n') {
        if hay[i] == b'\r' {
            i += 1;
        }
        if !(i < end && hay[i] == b'\n') {
            return;
        }
        i += 1;
        blanks(&mut i, 8, b" \t");
        if !(i < end && hay[i] == b'-') {
            return;
        }
        i += 1;
        if blanks(&mut i, 2, b" \t") == 0 {
            return;
        }
    }
    if i < end && hay[i] == b'\\' {
        i += 1;
    }
    if i < end && matches!(hay[i], b'"' | b'\'') {
        i += 1;
    }
    // A phone number's value starts with a digit, `+` or `(`, an IBAN's with a letter (only
    // IBAN ends with `an`).
    let fits = match hay.get(i).filter(|_| i < end) {
        Some(v) if v.is_ascii_alphabetic() => iban,
        Some(v) => v.is_ascii_digit() || matches!(v, b'+' | b'('),
        None => false,
    };
    if !fits {
        return;
    }
    if in_mask_entity(hay, k - 1) {
        return;
    }
    let ends = |at: usize, w: &str| {
        let w = w.as_bytes();
        at >= w.len() && hay[at - w.len()..at].eq_ignore_ascii_case(w)
    };
    let names = |at: usize, starts: &mut Vec<usize>| {
        for name in LABEL_NAMES {
            if ends(at, name) {
                starts.push(at - name.len());
            }
        }
    };
    names(e, starts);
    for suffix in LABEL_SUFFIXES {
        if ends(e, suffix) {
            // Before the suffix: maybe a `_`, `-` or blank, and before that maybe a dot
            // (`Tel.-Nr.`, `Tel.Nr`).
            let at = e - suffix.len();
            names(at, starts);
            let mut p = at;
            if p > 0 && matches!(hay[p - 1], b'_' | b'-' | b' ') {
                p -= 1;
                names(p, starts);
            }
            if p > 0 && hay[p - 1] == b'.' {
                names(p - 1, starts);
            }
        }
    }
}

/// Whether a name may end with the letters `a` and `b` (any case): the last two of a word of
/// [`LABEL_NAMES`] or [`LABEL_SUFFIXES`] (tested).
pub(super) fn ends_label(a: u8, b: u8) -> bool {
    matches!(
        (a | 0x20, b | 0x20),
        (b'n', b'e')
            | (b'e', b'l')
            | (b'l', b'e')
            | (b'i', b'l')
            | (b'l', b'l')
            | (b'd', b'n')
            | (b'a', b'x')
            | (b'p', b'p')
            | (b'o', b'n')
            | (b'n', b'o')
            | (b'e', b'r')
            | (b'u', b'm')
            | (b'n', b'r')
            | (b'r', b'o')
            | (b'a', b'n')
    )
}

/// Whether `hay` holds a `:`, `=` or `>` that may separate a labelled field's name from its value
/// (for [`super::LaneSieve`]: a piece without one holds no match of [`Labels`]).
pub(super) fn may_hold_label(hay: &[u8]) -> bool {
    let mut starts = Vec::new();
    memchr::memchr3_iter(b':', b'=', b'>', hay).any(|j| {
        label_starts(hay, j, hay.len(), &mut starts);
        !starts.is_empty()
    })
}

/// The patterns of the names of fields read whole in any text (`"mobile": "4915112345678"`,
/// `iban: de89...`, see `detectors::LABELLED_PHONE_PATTERN`), searched from each `:`, `=` and `>`.
///
/// Every match of them holds one `:`, `=` or `>`, its separator (and, after a `=`, maybe the
/// `>` of a hash's arrow, at which no match's name ends: `label_starts` lists none there), and
/// no more than `max_len` bytes. So from a search position, the first separator that some
/// match holds is the one of the leftmost match: a match starting after a separator holds a
/// later one, and one starting before it holds it. [`Labels::find`] takes the separators in order (memchr),
/// lists where a name before each may start (`label_starts`: none for most), and runs the
/// patterns anchored at each of those from the search position on, in order: the first match
/// is the leftmost-first match of the patterns from the search position, as the union's search
/// would find it (property-tested against the union automaton with the patterns inside).
pub(super) struct Labels {
    /// The global pattern id of each pattern.
    pids: Vec<u32>,
    re: hybrid::regex::Regex,
    max_len: usize,
}

impl Labels {
    pub(super) fn new(
        pids: Vec<u32>,
        sources: &[&str],
        max_len: usize,
        syntax: syntax::Config,
        dfa: hybrid::dfa::Config,
    ) -> Result<Labels, String> {
        let re = side_regex(sources, syntax, dfa)?;
        Ok(Labels { pids, re, max_len })
    }

    pub(super) fn create_cache(&self) -> hybrid::regex::Cache {
        self.re.create_cache()
    }

    /// The leftmost-first match of the patterns starting at or after `pos` and ending by
    /// `end`, with its global pattern id.
    pub(super) fn find(
        &self,
        cache: &mut hybrid::regex::Cache,
        hay: &[u8],
        pos: usize,
        end: usize,
    ) -> Option<(usize, usize, u32)> {
        // Starts from `from` on: not before the search position, nor before the previous
        // separator (a match starting there holds that one).
        let mut from = pos;
        let mut starts = Vec::new();
        for j in memchr::memchr3_iter(b':', b'=', b'>', hay.get(pos..end)?).map(|j| pos + j) {
            label_starts(hay, j, end, &mut starts);
            if !starts.is_empty() {
                starts.sort_unstable();
                for &s in starts.iter().filter(|&&s| s >= from) {
                    let input = Input::new(hay)
                        .span(s..end.min(s.saturating_add(self.max_len)))
                        .anchored(Anchored::Yes);
                    // No match, or (never with this configuration) a search error.
                    if let Some(m) = self.re.try_search(cache, &input).ok().flatten() {
                        let pid = *self.pids.get(m.pattern().as_usize())?;
                        return Some((m.start(), m.end(), pid));
                    }
                }
                starts.clear();
            }
            from = j + 1;
        }
        None
    }
}
