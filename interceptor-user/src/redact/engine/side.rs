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
//! [`EMAIL_LOCAL_MAX`] bytes after its start (the local part holds no `@`; it may hold
//! `%40`, and the match then takes the last one before a domain). So [`Side::find`] looks
//! for the next `@` or `%40` (memchr), walks back over local-part bytes to the leftmost
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

use super::detectors::{EMAIL_LOCAL_MAX, email_local};
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
            // The local part before this `@`: at most EMAIL_LOCAL_MAX bytes, from `floor` on
            // (a start before the last `@` would hold it; a local part may hold a `%40`).
            // (One byte more for a `_` the pattern's widened edge takes in before it.)
            let mut x = at;
            while x > floor && at - x <= EMAIL_LOCAL_MAX && email_local(hay[x - 1]) {
                x -= 1;
            }
            // Where the pattern can start: an ASCII letter or digit after a word boundary,
            // or a `_` before one (its widened edge, see `Edges` in the engine).
            let alnum = |i: usize| hay.get(i).is_some_and(u8::is_ascii_alphanumeric);
            let start = (x..at).find(|&s| {
                let local = at - s;
                (alnum(s) && (s == 0 || !is_word(hay[s - 1])) && local <= EMAIL_LOCAL_MAX)
                    || (hay[s] == b'_' && alnum(s + 1) && local <= EMAIL_LOCAL_MAX + 1)
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
