//! The e-mail pattern, searched beside the automaton from each `@`.
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

use super::detectors::{EMAIL_LOCAL_MAX, EMAIL_LOCAL_MAX_WIDE, email_local};
use super::validate::is_word;

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
        let re = hybrid::regex::Regex::builder()
            .syntax(syntax)
            .dfa(dfa)
            .build(source)
            .map_err(|e| e.to_string())?;
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
