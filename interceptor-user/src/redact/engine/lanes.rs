//! Interleaved runs of the forward automaton over long texts: where the one-pass search must
//! look closer.
//!
//! Following the lazy DFA costs one table load per byte, and each load needs the state the
//! previous one returned: one run cannot go faster than the latency of that load (~5 cycles
//! per byte here). A long text is therefore cut into [`LANES`] segments and the automaton runs
//! over all of them at once, one byte of each in turn; the loads of different segments do not
//! depend on each other, so the CPU overlaps them.
//!
//! The runs only report *candidates*: each position `c` where a run, started fresh (from its
//! segment's start, or just after its previous candidate), enters a match state (the byte
//! that completed a match, or the one after it). The engine's leftmost-first search then runs
//! from just before the candidates ([`Candidates::resume`]), and nothing else changes: which
//! matches are found and how they are validated is the same as for one search over the whole
//! text (property-tested against it).
//!
//! Why resuming there finds the same matches. Let `L` be the longest match of any pattern.
//! A match `[s, e)` inside a run's reach makes that run enter a match state at some `c <= e`
//! (the automaton reports the earliest match end of anything it tracks); if `c < s`, the run
//! restarts at `c + 1 <= s` and the argument repeats. So some candidate `c` has
//! `s <= c <= s + L`, found by a run started at or before `s`. A run crosses its segment's end
//! and stops only `L + 1` bytes later, or where its state is the one the next segment's run
//! had at the same place (or the fresh state): from there on both read the same and enter
//! match states at the same places. The matches the stopped run was following may have
//! started before the next segment, so the next run's candidates within `L` of its start are
//! credited with the stopped run's start (tested: without it, values across lane ends are
//! lost). [`Candidates::resume`] takes, over the candidates within `L` of the first one at or
//! after `pos`, the earliest start any of them allows: no match starts between `pos` and
//! there.
//!
//! Dense text (a value every few dozen bytes) has candidates everywhere, and reading again
//! from each would read the text twice. There the lanes run the engine's searches themselves
//! ([`searches`]): each lane searches leftmost-first from its segment's start, and again from
//! each match end, as the engine does after a value it masks; the engine takes a lane's
//! result when it searches from where a lane did. Those results are facts about the text, not
//! about the lane (tested against the union's own search from each start), so a search the
//! lanes did not run (after a rejected candidate) is simply run by the engine.

use regex_automata::hybrid::{self, LazyStateID};
use regex_automata::util::start;
use regex_automata::{Anchored, Input, Match, PatternID};

/// Runs interleaved.
const LANES: usize = 4;
/// Texts shorter than this are searched in one run (the set-up of the lanes does not pay).
pub(super) const MIN_TEXT: usize = 256;

/// Steps whose states are kept, to stop lanes early past their segment.
const TRAIL: usize = 128;
/// Lanes pay on text with fewer candidates than one per this many bytes...
const SPARSE: usize = 512;
/// ... known once this many were found.
const DENSE_AFTER: usize = 8;

/// One run: its state before reading `hay[q]`, and where it started fresh.
#[derive(Clone, Copy, Default)]
struct Lane {
    sid: LazyStateID,
    q: usize,
    fresh: usize,
}

/// The candidates of one text, consumed in order by the search.
#[derive(Debug)]
pub(super) struct Candidates {
    /// `(c, f)`: a run started fresh at `f` entered a match state reading `hay[c]` (or at
    /// the end of the text, `c` = its length); sorted by `c`.
    ends: Vec<(usize, usize)>,
    next: usize,
    max_len: usize,
}

impl Candidates {
    /// A position `r >= pos` such that no match starts in `pos..r`, and the first candidate
    /// at or after `pos` (for which the search from `r` looks); `None` when no match starts at
    /// or after `pos`.
    fn resume(&mut self, pos: usize) -> Option<(usize, usize)> {
        while self.ends.get(self.next).is_some_and(|&(c, _)| c < pos) {
            self.next += 1;
        }
        let &(first, _) = self.ends.get(self.next)?;
        let reach = first.saturating_add(self.max_len);
        let r = self.ends[self.next..]
            .iter()
            .take_while(|&&(c, _)| c <= reach)
            .map(|&(c, f)| f.max(c.saturating_sub(self.max_len)))
            .min()
            .unwrap_or(first);
        Some((r.max(pos), first))
    }

    /// Whether no match starts in `start..end`. Queried in increasing order of `start`, like
    /// [`Candidates::search`] (the candidates before `start` are passed over for good).
    pub(super) fn none_start_in(&mut self, start: usize, end: usize) -> bool {
        self.resume(start).is_none_or(|(r, _)| r >= end)
    }

    /// The leftmost-first match starting at or after `pos` (a char boundary) and ending by
    /// `end`: the same as `find`'s search over `pos..end` (the union's leftmost-first
    /// search), reading only near candidates.
    pub(super) fn search(
        &mut self,
        find: &mut impl FnMut(&Input<'_>) -> Option<Match>,
        text: &str,
        mut pos: usize,
        end: usize,
    ) -> Option<Match> {
        let hay = text.as_bytes();
        // Every match starting at `s` ends by `s + max_len`, and the automaton reads one byte
        // past the span: a search over `r..bound` finds every match starting by
        // `bound - max_len - 1`, and the leftmost of them exactly as the whole search would.
        let exact = self.max_len + 1;
        loop {
            let (r, first) = self.resume(pos)?;
            let bound = end.min(first.saturating_add(exact + 1));
            match find(&Input::new(hay).span(r..bound)) {
                Some(m) if bound == end || m.start() + exact <= bound => return Some(m),
                Some(m) => {
                    // A match too close to the bound to be sure of: search again, far enough.
                    let bound = end.min(m.start().saturating_add(exact + 1));
                    return find(&Input::new(hay).span(r..bound));
                }
                None if bound == end => return None,
                None => {
                    // No match starts before `first + 1`.
                    pos = bound - exact;
                    while !text.is_char_boundary(pos) {
                        pos += 1;
                    }
                }
            }
        }
    }
}

/// The automaton, its cache, and the cache's generation when the runs started (a cleared
/// cache invalidates every state id: the runs then give up).
struct Dfa<'a> {
    dfa: &'a hybrid::dfa::DFA,
    cache: &'a mut hybrid::dfa::Cache,
    generation: usize,
}

impl Dfa<'_> {
    /// The fresh state at `q` (what a search starting at `q` starts with).
    fn fresh(&mut self, hay: &[u8], q: usize) -> Option<LazyStateID> {
        let cfg = start::Config::new()
            .anchored(Anchored::No)
            .look_behind(q.checked_sub(1).and_then(|p| hay.get(p).copied()));
        let sid = self.dfa.start_state(self.cache, &cfg).ok()?;
        // A start state that matches (an empty pattern) leaves the work to the plain search.
        (!sid.is_tagged() && self.valid()).then_some(sid)
    }

    fn valid(&self) -> bool {
        self.cache.clear_count() == self.generation
    }

    /// One step of `lane`.
    #[inline(always)]
    fn step(&mut self, hay: &[u8], lane: &mut Lane, out: &mut Vec<(usize, usize)>) -> Option<()> {
        let next = self
            .dfa
            .next_state_untagged(self.cache, lane.sid, hay[lane.q]);
        if next.is_tagged() {
            self.slow(hay, lane, next, out)
        } else {
            lane.sid = next;
            lane.q += 1;
            Some(())
        }
    }

    /// A transition to a tagged state: not computed yet (compute it), a match (record it
    /// and start fresh after it), or anything else (give up).
    #[cold]
    #[inline(never)]
    fn slow(
        &mut self,
        hay: &[u8],
        lane: &mut Lane,
        mut next: LazyStateID,
        out: &mut Vec<(usize, usize)>,
    ) -> Option<()> {
        if next.is_unknown() {
            next = self
                .dfa
                .next_state(self.cache, lane.sid, hay[lane.q])
                .ok()?;
            if !self.valid() {
                return None;
            }
        }
        if next.is_match() {
            out.push((lane.q, lane.fresh));
            lane.q += 1;
            lane.fresh = lane.q;
            lane.sid = self.fresh(hay, lane.q)?;
        } else if next.is_tagged() {
            // Dead or quit: never before a match in an unanchored search, which restarts at
            // every match; not worth reasoning about.
            return None;
        } else {
            lane.sid = next;
            lane.q += 1;
        }
        Some(())
    }
}

/// What the lanes found over one range of a text.
#[derive(Debug)]
pub(super) enum LaneSearch {
    /// Few candidates: the engine searches near each.
    Sparse(Candidates),
    /// Many: the lanes ran the engine's searches (see [`searches`]).
    Dense(Searches),
    /// Many, found by [`find`]: the caller has the lanes run the searches. (Not from `find`
    /// itself: the loop there compiles to more instructions per byte when it can.)
    Crowded,
}

/// The candidates of matches starting in `from..stop` (`from` on a char boundary), reading
/// at most up to `end` (and the byte there, or the end of the text, for the automaton's
/// one-byte delay); `max_len` is the longest match of any pattern. `None` when the text is
/// too short for lanes to pay, or when anything unusual happens (the cache was cleared, the
/// automaton quit): the caller then searches in one run. With `sparse_only`, when the
/// candidates turn out dense: `Crowded` on a text long enough for the lanes to run the
/// searches instead ([`searches`]), `None` on a shorter one.
pub(super) fn find(
    dfa: &hybrid::dfa::DFA,
    cache: &mut hybrid::dfa::Cache,
    text: &str,
    (from, stop, end): (usize, usize, usize),
    max_len: usize,
    sparse_only: bool,
) -> Option<LaneSearch> {
    let hay = text.as_bytes();
    let len = stop.checked_sub(from)?;
    if len < MIN_TEXT || end > hay.len() || stop > end || !text.is_char_boundary(from) {
        return None;
    }
    let mut d = Dfa {
        dfa,
        generation: cache.clear_count(),
        cache,
    };
    // Lane `k` covers matches starting in `seg[k]..seg[k + 1]`.
    let seg: [usize; LANES + 1] = std::array::from_fn(|k| {
        if k == LANES {
            return stop;
        }
        let mut b = from + len / LANES * k;
        while b < stop && !text.is_char_boundary(b) {
            b += 1;
        }
        b.min(stop)
    });
    let mut lanes = [Lane::default(); LANES];
    for (k, lane) in lanes.iter_mut().enumerate() {
        let sid = d.fresh(hay, seg[k])?;
        *lane = Lane {
            sid,
            q: seg[k],
            fresh: seg[k],
        };
    }
    let mut ends: Vec<(usize, usize)> = Vec::new();

    // All lanes together, as far as the shortest segment goes. The states of the first
    // [`TRAIL`] steps are kept: a lane crossing into the next segment stops where its state
    // is the one the next lane had there (the runs' states agree once the threads started
    // before the segment's end are over, within a word in prose, a few dozen bytes in
    // base64).
    let steps = (0..LANES).map(|k| seg[k + 1] - seg[k]).min().unwrap_or(0);
    let kept = steps.min(TRAIL);
    let mut trail = [[LazyStateID::default(); LANES]; TRAIL];
    let mut i = 0;
    while i < steps {
        // The states stay in registers for as long as no transition is tagged (not computed
        // yet, or a match): then one step of each lane the careful way.
        let mut sid = lanes.map(|l| l.sid);
        {
            let (dfa, cache) = (d.dfa, &*d.cache);
            // The lanes' bytes from step `i` on, walked together by one zipped iterator: one
            // index for all and no bounds check per lane (an eighth fewer instructions per
            // byte than indexing each lane's slice).
            let h: [&[u8]; LANES] = std::array::from_fn(|k| &hay[seg[k] + i..seg[k] + steps]);
            let bytes = h[0].iter().zip(h[1]).zip(h[2]).zip(h[3]);
            let step = |sid: &[LazyStateID; LANES], b: [u8; LANES]| -> [LazyStateID; LANES] {
                std::array::from_fn(|k| dfa.next_state_untagged(cache, sid[k], b[k]))
            };
            let mut bytes = bytes.map(|(((&a, &b), &c), &d)| [a, b, c, d]);
            // The first steps keep their states (see `trail`).
            for b in bytes.by_ref().take(kept.saturating_sub(i)) {
                trail[i] = sid;
                let next = step(&sid, b);
                if next.iter().fold(false, |t, n| t | n.is_tagged()) {
                    break;
                }
                sid = next;
                i += 1;
            }
            if i >= kept {
                for b in bytes {
                    let next = step(&sid, b);
                    if next.iter().fold(false, |t, n| t | n.is_tagged()) {
                        break;
                    }
                    sid = next;
                    i += 1;
                }
            }
        }
        for (k, lane) in lanes.iter_mut().enumerate() {
            lane.sid = sid[k];
            lane.q = seg[k] + i;
        }
        if i == steps {
            break;
        }
        for lane in lanes.iter_mut() {
            d.step(hay, lane, &mut ends)?;
        }
        i += 1;
        // Dense text (personal data every few lines): reading again from each candidate
        // would read the text twice; the lanes run the engine's searches themselves instead.
        if sparse_only && ends.len() > DENSE_AFTER && ends.len() * SPARSE > i * LANES {
            return (len >= MIN_SEARCHES).then_some(LaneSearch::Crowded);
        }
    }

    // Then each lane alone: the rest of its segment, and past its end until it reads as the
    // next lane did, or no match started in the segment can still end.
    let mut handoff = [usize::MAX; LANES];
    for (k, lane) in lanes.iter_mut().enumerate() {
        let last = k + 1 == LANES;
        let until = if last {
            end
        } else {
            end.min(seg[k + 1].saturating_add(max_len + 1))
        };
        while lane.q < until {
            if !last && lane.q >= seg[k + 1] {
                // The next lane was in this state here (or a fresh one would be): from here on
                // it reads what this one would.
                let same = match trail[..kept].get(lane.q - seg[k + 1]) {
                    Some(states) => states[k + 1] == lane.sid,
                    None => d.fresh(hay, lane.q)? == lane.sid,
                };
                if same {
                    handoff[k + 1] = lane.fresh;
                    break;
                }
            }
            d.step(hay, lane, &mut ends)?;
        }
        if lane.q == end {
            // Matches are reported one byte late: the byte after the range, or the end.
            let delayed = match hay.get(end) {
                Some(&b) => d.dfa.next_state(d.cache, lane.sid, b),
                None => d.dfa.next_eoi_state(d.cache, lane.sid),
            };
            match delayed {
                Ok(s) if s.is_match() => ends.push((end, lane.fresh)),
                Ok(s) if !s.is_quit() => {}
                _ => return None,
            }
            if !d.valid() {
                return None;
            }
        }
    }

    // A lane stopped early hands what it was following to the next one: candidates within
    // `max_len` of that lane's start may end matches that started in the stopped lane.
    for (&start, &f_stopped) in seg.iter().zip(&handoff).skip(1) {
        if f_stopped == usize::MAX {
            continue;
        }
        let reach = start.saturating_add(max_len);
        for (c, f) in ends.iter_mut() {
            if (start..=reach).contains(c) {
                *f = (*f).min(f_stopped);
            }
        }
    }
    ends.sort_unstable();
    Some(LaneSearch::Sparse(Candidates {
        ends,
        next: 0,
        max_len,
    }))
}

/// A search the engine's loop makes: over `f..end`, the union's leftmost-first search finds a
/// match ending at `.0` of pattern `.1`, or nothing.
pub(super) type Search = (usize, Option<(usize, PatternID)>);

/// Dense text: the results of the leftmost-first searches the engine makes from each match
/// end, found by the lanes over one window of the text; consumed in order by the engine's
/// loop.
#[derive(Debug)]
pub(super) struct Searches {
    /// Sorted by where they start, one per start.
    done: Vec<Search>,
    next: usize,
    /// The window's end: searches starting there or later were not run.
    until: usize,
    /// Searches the engine asked for that the lanes had run, and had not.
    hits: usize,
    misses: usize,
}

/// The lanes run the searches of this many bytes at a time: the engine then sees whether
/// they were the ones it needed before it has the next window run.
pub(super) const WINDOW: usize = 32 << 10;
/// ... and of this many first, so that a text where they are not (a CSV export, scanned in
/// segments of ~100 KB by the JSON rewriter) wastes little at each segment.
pub(super) const FIRST_WINDOW: usize = 8 << 10;
/// The lanes run the searches of texts this long or longer: in shorter ones, where the lanes
/// meet costs more than they save.
pub(super) const MIN_SEARCHES: usize = 4 << 10;

impl Searches {
    #[cfg(test)]
    pub(super) fn done(&self) -> &[Search] {
        &self.done
    }

    /// What the search over `pos..end` finds, if the lanes ran it; `pos` never decreases
    /// from one call to the next.
    pub(super) fn get(&mut self, pos: usize) -> Option<Option<(usize, PatternID)>> {
        while self.done.get(self.next).is_some_and(|&(f, _)| f < pos) {
            self.next += 1;
        }
        match self.done.get(self.next) {
            Some(&(f, found)) if f == pos => {
                self.hits += 1;
                Some(found)
            }
            _ => {
                self.misses += 1;
                None
            }
        }
    }

    /// Whether the search from `pos` is past the window.
    pub(super) fn ran_out(&self, pos: usize) -> bool {
        pos >= self.until
    }

    /// Whether the lanes ran most of the searches the engine needed: a text whose candidates
    /// are mostly rejected (numbers in a CSV export) has the engine search again from inside
    /// each, where no lane did, and the lanes' reading is then wasted.
    pub(super) fn paid(&self) -> bool {
        self.hits >= self.misses
    }
}

/// How far past its segment a lane may go before its searches meet the next lane's.
const MEET_WITHIN: usize = 4096;

/// One lane's leftmost-first searches: the state before reading `hay[q]`, where the current
/// search started, and the last match state it entered with the end of that match.
#[derive(Clone, Copy, Default)]
struct Run {
    sid: LazyStateID,
    q: usize,
    fresh: usize,
    last: Option<(LazyStateID, usize)>,
}

impl Dfa<'_> {
    /// One step of a run's search: a search ends when the automaton dies (it dies only after a
    /// match, which it reports one byte late); it is recorded and the next starts at that
    /// match's end, as the engine's loop does after a value.
    fn search_step(&mut self, hay: &[u8], run: &mut Run, out: &mut Vec<Search>) -> Option<()> {
        let next = self.dfa.next_state(self.cache, run.sid, hay[run.q]).ok()?;
        if !self.valid() {
            return None;
        }
        if next.is_tagged() {
            if next.is_match() {
                run.last = Some((next, run.q));
            } else if next.is_dead() {
                let (sid, e) = run.last?;
                out.push((
                    run.fresh,
                    Some((e, self.dfa.match_pattern(self.cache, sid, 0))),
                ));
                if e <= run.fresh {
                    // An empty match (no built-in pattern has one): not worth reasoning about.
                    return None;
                }
                *run = Run {
                    sid: self.fresh(hay, e)?,
                    q: e,
                    fresh: e,
                    last: None,
                };
                return Some(());
            } else {
                // Quit, or a start state (only with a prefilter, which the union has not).
                return None;
            }
        }
        run.sid = next;
        run.q += 1;
        Some(())
    }

    /// The end of the range, at `run.q`: the byte after it, or the end of the text, ends the
    /// search.
    fn search_end(&mut self, hay: &[u8], run: &mut Run, out: &mut Vec<Search>) -> Option<()> {
        let next = match hay.get(run.q) {
            Some(&b) => self.dfa.next_state(self.cache, run.sid, b),
            None => self.dfa.next_eoi_state(self.cache, run.sid),
        }
        .ok()?;
        if !self.valid() || next.is_quit() {
            return None;
        }
        if next.is_match() {
            run.last = Some((next, run.q));
        }
        let found = run
            .last
            .map(|(sid, e)| (e, self.dfa.match_pattern(self.cache, sid, 0)));
        out.push((run.fresh, found));
        Some(())
    }
}

/// Dense text: the searches of the engine's loop, run by the lanes. The loop searches from
/// `pos`, takes the match, and searches again from its end, or from a little further when a
/// validator rejects it or extends it. Each lane does the same over its segment, assuming
/// every match is taken as found: it starts at its segment's start, and again at each match
/// end. Each search is a fact that does not depend on the lane: what the union's search over
/// `f..end` finds, for the `f` it started at. The engine uses the result when it searches from
/// an `f` a lane searched from (and searches itself otherwise, after a rejected value for
/// example: the next value's end is then usually a lane's `f` again).
///
/// A lane runs past its segment until it starts a search where the next lane started one:
/// from there on it would repeat the next lane's searches. In dense text that is within a
/// value or two; a lane that has not met the next within [`MEET_WITHIN`] bytes, or anything
/// unusual (the cache cleared, the automaton quit), gives `None`: the caller searches in one
/// run.
pub(super) fn searches(
    dfa: &hybrid::dfa::DFA,
    cache: &mut hybrid::dfa::Cache,
    text: &str,
    (from, stop, end): (usize, usize, usize),
) -> Option<Searches> {
    let hay = text.as_bytes();
    let len = stop.checked_sub(from)?;
    if len < MIN_TEXT || end > hay.len() || stop > end || !text.is_char_boundary(from) {
        return None;
    }
    let mut d = Dfa {
        dfa,
        generation: cache.clear_count(),
        cache,
    };
    // The segments as in `find`, written out again: with one helper for both, the loop in
    // `find` compiled to 3% more instructions on sparse JSON (callgrind).
    let seg: [usize; LANES + 1] = std::array::from_fn(|k| {
        if k == LANES {
            return stop;
        }
        let mut b = from + len / LANES * k;
        while b < stop && !text.is_char_boundary(b) {
            b += 1;
        }
        b.min(stop)
    });
    let mut runs = [Run::default(); LANES];
    for (k, run) in runs.iter_mut().enumerate() {
        *run = Run {
            sid: d.fresh(hay, seg[k])?,
            q: seg[k],
            fresh: seg[k],
            last: None,
        };
    }
    let mut done: [Vec<Search>; LANES] = Default::default();

    // All lanes together, until one reaches its segment's end. The lanes need not keep step:
    // each reads from its own position.
    loop {
        // A lane in a match state goes on alone until it leaves it (a few bytes).
        for (k, run) in runs.iter_mut().enumerate() {
            while run.sid.is_tagged() && run.q < seg[k + 1] {
                d.search_step(hay, run, &mut done[k])?;
            }
        }
        let n = (0..LANES)
            .map(|k| seg[k + 1].saturating_sub(runs[k].q))
            .min()
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        let mut sid = runs.map(|r| r.sid);
        let mut i = 0;
        let mut tagged = None;
        {
            let (dfa, cache) = (d.dfa, &*d.cache);
            let h: [&[u8]; LANES] = std::array::from_fn(|k| &hay[runs[k].q..runs[k].q + n]);
            for (((&a, &b), &c), &e) in h[0].iter().zip(h[1]).zip(h[2]).zip(h[3]) {
                let b = [a, b, c, e];
                let next: [LazyStateID; LANES] =
                    std::array::from_fn(|k| dfa.next_state_untagged(cache, sid[k], b[k]));
                if next.iter().fold(false, |t, n| t | n.is_tagged()) {
                    tagged = Some(next);
                    break;
                }
                sid = next;
                i += 1;
            }
        }
        for (k, run) in runs.iter_mut().enumerate() {
            run.sid = sid[k];
            run.q += i;
        }
        // The step that met a tagged state: the careful way for the lanes that met one.
        if let Some(next) = tagged {
            for (k, run) in runs.iter_mut().enumerate() {
                if next[k].is_tagged() {
                    d.search_step(hay, run, &mut done[k])?;
                } else {
                    run.sid = next[k];
                    run.q += 1;
                }
            }
        }
    }

    // Then each lane alone, the last first: the rest of its segment, and past its end until it
    // starts a search the next lane started (or no search it starts is needed).
    for k in (0..LANES).rev() {
        let run = &mut runs[k];
        let last = k + 1 == LANES;
        loop {
            if run.q == run.fresh && run.last.is_none() {
                // A search starts here.
                if run.fresh >= stop {
                    break;
                }
                if !last && run.fresh >= seg[k + 1] {
                    // (A later lane may have stopped where the one after it started.)
                    let met = done[k + 1..]
                        .iter()
                        .any(|later| later.binary_search_by_key(&run.fresh, |s| s.0).is_ok());
                    if met {
                        break;
                    }
                    if run.fresh > seg[k + 1] + MEET_WITHIN {
                        return None;
                    }
                }
            }
            if run.q >= end {
                d.search_end(hay, run, &mut done[k])?;
                break;
            }
            d.search_step(hay, run, &mut done[k])?;
        }
    }

    let mut done: Vec<Search> = done.into_iter().flatten().collect();
    done.sort_unstable_by_key(|s| s.0);
    done.dedup_by_key(|s| s.0);
    Some(Searches {
        done,
        next: 0,
        until: stop,
        hits: 0,
        misses: 0,
    })
}
