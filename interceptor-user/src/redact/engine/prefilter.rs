//! The engine's prefilter: which stretches of a text cannot hold the start of any match, so
//! that the automaton never reads them.
//!
//! For each pattern we choose a set `S` of *anchor* bytes such that every match of the pattern
//! contains a byte of `S`, and compute `lb`, the largest offset of the first `S` byte from a
//! match's start (an exact walk of the pattern's syntax tree: for every element, the largest
//! offset of a first `S` byte in its matches and the longest of its matches without one).
//! `S` is chosen per pattern from a menu (one or two punctuation bytes, one capital, digits,
//! capitals, both, every byte but lowercase letters and the space), as the cheapest by a fixed model of how common
//! bytes are in text, counting what other patterns' anchors already cover. So cards are
//! anchored on digits with `lb` 0, an e-mail address on its `@` with `lb` 64 (its local part
//! may be lowercase letters only), an IPv6 address on its first `:` (`lb` 4), a month-first
//! date on the digits after the month name (`lb` 15). A byte's bound is the largest over the
//! patterns anchored on it.
//!
use regex_syntax::hir::{Class, Hir, HirKind};

/// Offsets beyond this are not tracked (a custom pattern whose anchors lie deep inside it).
const MAX_LB: i64 = 250;
/// Anchors that are rare (`@`) and farther than this into a match are found with memchr; the
/// others by a table.
const NEAR: u16 = 16;
/// Bytes read by the automaton per anchor occurrence besides its bound (the token around it).
const WINDOW: u32 = 8;
const NEG: i64 = i64::MIN / 4;

/// How common a byte is in text (bigger: more common), to choose rare anchors.
fn commonness(b: u8) -> u32 {
    match b {
        b'a'..=b'z' | b' ' => 100,
        b'.' | b',' => 25,
        b'\n' | b'\t' | b'\r' => 20,
        b'A'..=b'Z' => 12,
        b'0'..=b'9' | b'-' | b'"' => 10,
        b'/' | b'\'' => 8,
        b':' | b'_' | b'(' | b')' | b'=' => 5,
        0x80.. => 50,
        _ => 3,
    }
}

/// A set of bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Set([bool; 256]);

impl Set {
    fn of(f: impl Fn(u8) -> bool) -> Set {
        let mut s = [false; 256];
        for (b, x) in s.iter_mut().enumerate() {
            *x = f(b as u8);
        }
        Set(s)
    }
    fn has(&self, b: u8) -> bool {
        self.0[usize::from(b)]
    }
    fn bytes(&self) -> impl Iterator<Item = u8> + '_ {
        (0..=255u8).filter(|&b| self.has(b))
    }
}

/// The candidate anchor sets: never lowercase letters, spaces or non-ASCII bytes.
fn menu() -> Vec<Set> {
    let punct: Vec<u8> = (0x21..0x7fu8)
        .filter(|b| !b.is_ascii_alphanumeric())
        .collect();
    let mut m: Vec<Set> = punct.iter().map(|&p| Set::of(|b| b == p)).collect();
    for (i, &p) in punct.iter().enumerate() {
        for &q in &punct[i + 1..] {
            m.push(Set::of(|b| b == p || b == q));
        }
    }
    m.push(Set::of(|b| b.is_ascii_digit()));
    m.push(Set::of(|b| b.is_ascii_uppercase()));
    m.push(Set::of(|b| b.is_ascii_digit() || b.is_ascii_uppercase()));
    m.push(Set::of(|b| {
        b.is_ascii_graphic() && !b.is_ascii_lowercase() || b == b'\n' || b == b'\t'
    }));
    m.extend((b'A'..=b'Z').map(|u| Set::of(|b| b == u)));
    m
}

/// For the matches of `h`: the largest offset of the first byte of `s` in those that hold
/// one (`NEG` if none does), and the longest length of those that hold none (`NEG` if every
/// match holds one).
fn first_and_avoid(h: &Hir, s: &Set) -> (i64, i64) {
    let cap = |x: i64| if x < 0 { NEG } else { x.min(MAX_LB + 1) };
    match h.kind() {
        HirKind::Empty | HirKind::Look(_) => (NEG, 0),
        HirKind::Literal(lit) => match lit.0.iter().position(|&b| s.has(b)) {
            Some(k) => (k as i64, NEG),
            None => (NEG, lit.0.len() as i64),
        },
        HirKind::Class(Class::Bytes(c)) => {
            let (mut any_in, mut any_out) = (false, false);
            for r in c.ranges() {
                for b in r.start()..=r.end() {
                    if s.has(b) {
                        any_in = true;
                    } else {
                        any_out = true;
                    }
                }
            }
            (if any_in { 0 } else { NEG }, if any_out { 1 } else { NEG })
        }
        HirKind::Class(Class::Unicode(c)) => {
            let (mut any_in, mut out_len) = (false, NEG);
            for r in c.ranges() {
                let (lo, hi) = (u32::from(r.start()), u32::from(r.end()));
                for b in lo.min(0x80)..hi.saturating_add(1).min(0x80) {
                    if s.has(b as u8) {
                        any_in = true;
                    } else {
                        out_len = out_len.max(1);
                    }
                }
                if hi >= 0x80 {
                    out_len = out_len.max(i64::from(r.end().len_utf8() as u8));
                }
            }
            (if any_in { 0 } else { NEG }, out_len)
        }
        HirKind::Capture(c) => first_and_avoid(&c.sub, s),
        HirKind::Repetition(r) => {
            let (f, a) = first_and_avoid(&r.sub, s);
            let Some(max) = r.max else {
                // Unbounded (refused by the engine anyway): only if one pass must hold `s`.
                return if a > 0 {
                    (MAX_LB + 1, a)
                } else {
                    (f, if r.min == 0 { 0 } else { a })
                };
            };
            let k = i64::from(max);
            let first = if f == NEG {
                NEG
            } else if a >= 0 {
                cap(f + (k - 1) * a)
            } else {
                f
            };
            let avoid = if a >= 0 {
                cap(k * a)
            } else if r.min == 0 {
                0
            } else {
                NEG
            };
            (first, avoid)
        }
        HirKind::Concat(subs) => {
            let (mut first, mut avoid) = (NEG, 0i64);
            for sub in subs {
                let (f, a) = first_and_avoid(sub, s);
                if avoid != NEG && f != NEG {
                    first = first.max(cap(avoid + f));
                }
                avoid = if avoid == NEG || a == NEG {
                    NEG
                } else {
                    cap(avoid + a)
                };
            }
            (first, avoid)
        }
        HirKind::Alternation(subs) => subs
            .iter()
            .map(|sub| first_and_avoid(sub, s))
            .fold((NEG, NEG), |(f, a), (g, b)| (f.max(g), a.max(b))),
    }
}

/// Bound per anchor byte (`None`: not an anchor).
type Bounds = [Option<u16>; 256];

/// The cost of making every byte of `s` an anchor with bound `lb`, given `have`.
fn marginal(s: &Set, lb: i64, have: &Bounds) -> u32 {
    s.bytes()
        .map(|b| {
            let new = lb as u32 + WINDOW;
            let old = have[usize::from(b)].map_or(0, |l| u32::from(l) + WINDOW);
            commonness(b) * new.saturating_sub(old)
        })
        .sum()
}

/// The bytes `h` can match (a set without any of them cannot anchor it).
fn bytes_of(h: &Hir, out: &mut Set) {
    match h.kind() {
        HirKind::Empty | HirKind::Look(_) => {}
        HirKind::Literal(lit) => {
            for &b in lit.0.iter() {
                out.0[usize::from(b)] = true;
            }
        }
        HirKind::Class(Class::Bytes(c)) => {
            for r in c.ranges() {
                for b in r.start()..=r.end() {
                    out.0[usize::from(b)] = true;
                }
            }
        }
        HirKind::Class(Class::Unicode(c)) => {
            for r in c.ranges() {
                let (lo, hi) = (u32::from(r.start()), u32::from(r.end()));
                for b in lo.min(0x80)..hi.saturating_add(1).min(0x80) {
                    out.0[b as usize] = true;
                }
            }
        }
        HirKind::Capture(c) => bytes_of(&c.sub, out),
        HirKind::Repetition(r) => bytes_of(&r.sub, out),
        HirKind::Concat(subs) | HirKind::Alternation(subs) => {
            for sub in subs {
                bytes_of(sub, out);
            }
        }
    }
}

/// The cheapest (set, bound) of the menu that anchors every match of `h`.
fn choose(h: &Hir, menu: &[Set], have: &Bounds) -> Option<(Set, i64)> {
    let mut present = Set([false; 256]);
    bytes_of(h, &mut present);
    menu.iter()
        .filter(|s| s.bytes().any(|b| present.has(b)))
        .filter_map(|s| {
            let (first, avoid) = first_and_avoid(h, s);
            (avoid == NEG && (0..=MAX_LB).contains(&first)).then_some((*s, first))
        })
        .min_by_key(|(s, lb)| (marginal(s, *lb, have), *lb))
}

fn add(bounds: &mut Bounds, s: &Set, lb: i64) {
    for b in s.bytes() {
        let l = &mut bounds[usize::from(b)];
        *l = Some(l.map_or(lb as u16, |x| x.max(lb as u16)));
    }
}

/// Anchor bounds for all patterns: chosen alone first, then again given the others' choice.
fn all_bounds(patterns: &[Hir]) -> Option<Bounds> {
    let menu = menu();
    let none: Bounds = [None; 256];
    let mut choice: Vec<(Set, i64)> = Vec::with_capacity(patterns.len());
    for h in patterns {
        choice.push(choose(h, &menu, &none)?);
    }
    for (k, h) in patterns.iter().enumerate() {
        let mut others = none;
        for (j, (s, lb)) in choice.iter().enumerate() {
            if j != k {
                add(&mut others, s, *lb);
            }
        }
        choice[k] = choose(h, &menu, &others)?;
    }
    let mut bounds = none;
    for (s, lb) in &choice {
        add(&mut bounds, s, *lb);
    }
    Some(bounds)
}

/// The anchors of all patterns of an engine, ready to scan with.
pub(crate) struct Prefilter {
    /// 0: not a near anchor; else its bound plus one.
    near: [u8; 256],
    /// At most [`RANGES`] byte ranges `(lo, hi - lo)` holding every near anchor (and maybe a
    /// few other bytes): a block without any of them has no anchor, checked with compares
    /// that vectorise. Empty: use the table only.
    ranges: Vec<(u8, u8)>,
    max_near: usize,
    far: Vec<u8>,
    /// The largest bound of the far anchors.
    far_lb: usize,
    /// Any anchor bound (how far past a range its anchors may lie).
    max_lb: usize,
}

/// What a scan (with one `limit`) learned so far: no far anchor in `[from, to)`, and one at
/// `to` if `found`; no near anchor in `[near_from, near_at)`, and the earliest start the near
/// anchors from `near_at` on allow is `near_t` (`usize::MAX`: none).
pub(crate) struct Cursor {
    from: usize,
    to: usize,
    found: bool,
    near_from: usize,
    near_at: usize,
    near_t: usize,
}

impl Default for Cursor {
    fn default() -> Cursor {
        Cursor {
            from: usize::MAX,
            to: 0,
            found: false,
            near_from: usize::MAX,
            near_at: 0,
            near_t: usize::MAX,
        }
    }
}

impl std::fmt::Debug for Prefilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Bytes grouped by bound: `0123456789:15` is the digits with bound 15.
        let mut by_lb: std::collections::BTreeMap<u8, String> = Default::default();
        for b in 0..=255u8 {
            let v = self.near[usize::from(b)];
            if v != 0 {
                by_lb
                    .entry(v - 1)
                    .or_default()
                    .push_str(&std::ascii::escape_default(b).to_string());
            }
        }
        let near: Vec<String> = by_lb.iter().map(|(l, bs)| format!("{bs}:{l}")).collect();
        f.debug_struct("Prefilter")
            .field("near", &near)
            .field("ranges", &self.ranges.len())
            .field("max_near", &self.max_near)
            .field("far", &String::from_utf8_lossy(&self.far))
            .field("far_lb", &self.far_lb)
            .finish()
    }
}

impl Prefilter {
    /// The prefilter of these patterns, or `None` when some pattern has no anchors.
    pub(crate) fn new(patterns: &[Hir]) -> Option<Prefilter> {
        let bounds = all_bounds(patterns)?;
        let mut near = [0u8; 256];
        let (mut max_near, mut far, mut far_lb) = (0, Vec::new(), 0);
        for (b, l) in bounds.iter().enumerate() {
            let Some(l) = *l else { continue };
            if l > NEAR && commonness(b as u8) <= 3 && far.len() < 3 {
                far.push(b as u8);
                far_lb = far_lb.max(usize::from(l));
            } else {
                near[b] = u8::try_from(l + 1).ok()?;
                max_near = max_near.max(usize::from(l));
            }
        }
        Some(Prefilter {
            ranges: cover(&near),
            near,
            max_near,
            far,
            far_lb,
            max_lb: max_near.max(far_lb),
        })
    }

    /// The smallest position `>= p` at which a match can start, looking at anchors before
    /// `limit` only (a match starting before `s` has its anchor before `s + max_lb()`);
    /// `None` when there is none.
    pub(crate) fn next_start(
        &self,
        hay: &[u8],
        p: usize,
        limit: usize,
        cur: &mut Cursor,
    ) -> Option<usize> {
        let limit = limit.min(hay.len());
        let mut t = if cur.near_from <= p && p <= cur.near_at {
            cur.near_t
        } else {
            let i = self.find_near(hay, p, limit);
            let mut t = usize::MAX;
            if i < limit {
                t = i.saturating_sub(usize::from(self.near[usize::from(hay[i])] - 1));
                // A later anchor with a larger bound may allow an earlier start: j - lb(j) < t
                // needs j < t + max_near.
                let end = t.saturating_add(self.max_near + 1).min(limit);
                if let Some(window) = hay.get(i + 1..end) {
                    for (k, &b) in window.iter().enumerate() {
                        let v = self.near[usize::from(b)];
                        if v != 0 {
                            t = t.min((i + 1 + k).saturating_sub(usize::from(v - 1)));
                        }
                    }
                }
            }
            cur.near_from = p;
            cur.near_at = i;
            cur.near_t = t;
            t
        };
        if !self.far.is_empty() {
            let f = self.find_far(hay, p, limit, cur);
            if f < limit {
                t = t.min(f.saturating_sub(self.far_lb));
            }
        }
        (t != usize::MAX).then(|| t.max(p))
    }

    /// What [`next_start`](Self::next_start) would return at `p`, when the cursor already
    /// knows (`Some(None)`: no start possible); `None` when it does not.
    #[inline]
    pub(crate) fn cached(&self, cur: &Cursor, p: usize) -> Option<Option<usize>> {
        if !(cur.near_from <= p && p <= cur.near_at) {
            return None;
        }
        let mut t = cur.near_t;
        if !self.far.is_empty() {
            if !(cur.from <= p && p <= cur.to) {
                return None;
            }
            if cur.found {
                t = t.min(cur.to.saturating_sub(self.far_lb));
            }
        }
        Some((t != usize::MAX).then(|| t.max(p)))
    }

    /// How far past a position its anchors may lie.
    pub(crate) fn max_lb(&self) -> usize {
        self.max_lb
    }

    /// The first near anchor in `[p, limit)`, or `limit`.
    fn find_near(&self, hay: &[u8], p: usize, limit: usize) -> usize {
        let t = &self.near;
        let limit = limit.min(hay.len());
        let mut k = p;
        loop {
            // Whole blocks without any byte of the ranges; then one block byte by byte.
            let rest = hay.get(k..limit).unwrap_or_default();
            k += match self.ranges.as_slice() {
                [r] => skip_blocks(rest, [*r, *r, *r]),
                [r, q] => skip_blocks(rest, [*r, *q, *q]),
                [r, q, o] => skip_blocks(rest, [*r, *q, *o]),
                _ => 0,
            };
            let end = (k + BLOCK).min(limit);
            while k < end {
                if t[usize::from(hay[k])] != 0 {
                    return k;
                }
                k += 1;
            }
            if k >= limit {
                return limit;
            }
        }
    }

    /// The first far anchor in `[p, limit)`, or `limit`; remembers how far it looked.
    fn find_far(&self, hay: &[u8], p: usize, limit: usize, cur: &mut Cursor) -> usize {
        let mut from = p;
        if cur.from <= p && p <= cur.to {
            if cur.found || limit <= cur.to {
                return cur.to.min(limit);
            }
            from = cur.to;
        }
        let h = hay.get(from..limit).unwrap_or_default();
        let found = match self.far.as_slice() {
            [a] => memchr::memchr(*a, h),
            [a, b] => memchr::memchr2(*a, *b, h),
            [a, b, c] => memchr::memchr3(*a, *b, *c, h),
            set => h.iter().position(|b| set.contains(b)),
        };
        let to = found.map_or(limit, |k| from + k);
        cur.from = p;
        cur.to = to;
        cur.found = found.is_some();
        to
    }
}

/// Bytes per block of the anchor scan.
const BLOCK: usize = 32;
/// Ranges tried by the vectorised block check.
const RANGES: usize = 3;

/// The bytes of the whole blocks `hay` starts with that hold no byte of the ranges
/// `(lo, hi - lo)` (branch-free compares over fixed-size blocks, which the compiler turns into
/// vector instructions).
fn skip_blocks(hay: &[u8], [(a, m), (b, n), (c, o)]: [(u8, u8); 3]) -> usize {
    let mut skipped = 0;
    for block in hay.chunks_exact(BLOCK) {
        let Ok(block) = <&[u8; BLOCK]>::try_from(block) else {
            break;
        };
        let mut acc = 0u8;
        for &x in block {
            acc |= u8::from(x.wrapping_sub(a) <= m)
                | u8::from(x.wrapping_sub(b) <= n)
                | u8::from(x.wrapping_sub(c) <= o);
        }
        if acc != 0 {
            break;
        }
        skipped += BLOCK;
    }
    skipped
}

/// At most [`RANGES`] ranges covering the anchors of `near`, bridging gaps of rare bytes;
/// none if that is not possible.
fn cover(near: &[u8; 256]) -> Vec<(u8, u8)> {
    let mut ranges: Vec<(u8, u8)> = Vec::new();
    let mut b = 0usize;
    while b < 256 {
        if near[b] == 0 {
            b += 1;
            continue;
        }
        let lo = b;
        while b < 256 && near[b] != 0 {
            b += 1;
        }
        ranges.push((lo as u8, (b - 1) as u8));
    }
    // Merge neighbours across gaps of rare bytes (scanning blocks with them costs less than
    // another compare), until few enough ranges remain.
    let gap_cost = |a: u8, b: u8| -> u32 { (a + 1..b).map(commonness).sum() };
    while ranges.len() > RANGES {
        let Some((k, _)) = ranges
            .windows(2)
            .enumerate()
            .map(|(k, w)| (k, gap_cost(w[0].1, w[1].0)))
            .min_by_key(|&(_, c)| c)
        else {
            break;
        };
        if gap_cost(ranges[k].1, ranges[k + 1].0) > 30 {
            return Vec::new();
        }
        ranges[k].1 = ranges[k + 1].1;
        ranges.remove(k + 1);
    }
    // Also bridge cheap gaps below the limit.
    let mut k = 0;
    while k + 1 < ranges.len() {
        if gap_cost(ranges[k].1, ranges[k + 1].0) <= 10 {
            ranges[k].1 = ranges[k + 1].1;
            ranges.remove(k + 1);
        } else {
            k += 1;
        }
    }
    ranges.into_iter().map(|(lo, hi)| (lo, hi - lo)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pf(patterns: &[&str]) -> Option<Prefilter> {
        let hirs: Vec<Hir> = patterns
            .iter()
            .map(|p| {
                regex_syntax::ParserBuilder::new()
                    .unicode(false)
                    .utf8(true)
                    .build()
                    .parse(p)
                    .expect("pattern")
            })
            .collect();
        Prefilter::new(&hirs)
    }

    #[test]
    fn anchors_of_shapes() {
        let p = pf(&[r"\b[A-Za-z0-9][A-Za-z0-9.]{0,63}@[a-z]{1,10}\.[a-z]{2,3}\b"]).expect("pf");
        assert_eq!((p.far.as_slice(), p.far_lb), (&b"@"[..], 64));
        let p = pf(&[r"\b[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}\b"]).expect("pf");
        assert!(p.max_near <= 2, "{p:?}");
        // The first `:` of an IPv6 address is at most 4 bytes in, although `(?::h){0,6}` may
        // be empty.
        let p =
            pf(&[r"\b[0-9a-f]{1,4}(?::[0-9a-f]{1,4}){0,6}::(?:[0-9a-f]{1,4})?|::[0-9a-f]{1,4}"])
                .expect("pf");
        assert_eq!(p.near[usize::from(b':')], 5, "{p:?}");
        let p = pf(&[r"(?:\+|\b00)[1-9][0-9]{0,2}"]).expect("pf");
        assert_ne!(p.near[usize::from(b'0')], 0, "{p:?}");
        // Lowercase-only patterns, or ones that can match without any rare byte, have none.
        assert!(pf(&[r"\b[a-z]{5}\b"]).is_none());
        assert!(pf(&[r"x?"]).is_none());
        assert!(pf(&[r"[0-9]{3}|[a-z]{3}"]).is_none());
    }

    #[test]
    fn first_and_avoid_is_exact_on_small_cases() {
        let parse = |p: &str| {
            regex_syntax::ParserBuilder::new()
                .unicode(false)
                .utf8(true)
                .build()
                .parse(p)
                .expect("pattern")
        };
        let digits = Set::of(|b| b.is_ascii_digit());
        assert_eq!(
            first_and_avoid(&parse(r"[a-z]{0,3}[0-9]"), &digits),
            (3, NEG)
        );
        assert_eq!(first_and_avoid(&parse(r"[a-z]{1,3}"), &digits), (NEG, 3));
        assert_eq!(first_and_avoid(&parse(r"(?:a[0-9]|bcd)"), &digits), (1, 3));
        assert_eq!(first_and_avoid(&parse(r"(?:x[0-9]?){2}"), &digits), (2, 2));
        assert_eq!(
            first_and_avoid(&parse(r"(?:x[0-9]?){2}[0-9]"), &digits),
            (2, NEG)
        );
    }

    #[test]
    fn block_scan_finds_what_the_table_finds() {
        let p = pf(&[
            r"[0-9]{3}",
            r"[A-Z]{2}",
            r"a[._-]b",
            r"x:y",
            r"[a-z]{1,5}@x",
        ])
        .expect("pf");
        assert!(!p.ranges.is_empty(), "{p:?}");
        let mut seed = 0x1234_5678_9abc_def1u64;
        for len in [0usize, 1, 31, 32, 33, 100, 1000] {
            for _ in 0..50 {
                let hay: Vec<u8> = (0..len)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        // Mostly lowercase and spaces, sometimes anything.
                        if seed.is_multiple_of(97) {
                            (seed >> 8) as u8
                        } else {
                            b"abc xyz/ ;"[(seed % 10) as usize]
                        }
                    })
                    .collect();
                for start in [0, len / 3, len / 2] {
                    let naive = (start..len)
                        .find(|&k| p.near[usize::from(hay[k])] != 0)
                        .unwrap_or(len);
                    assert_eq!(p.find_near(&hay, start, len), naive);
                }
            }
        }
    }

    #[test]
    fn next_start_is_a_lower_bound() {
        let p = pf(&[r"[0-9]{3}", r"[a-z]{1,5}@x"]).expect("pf");
        let hay = b"hello world abc 123 and foo@x and more text here";
        let mut c = Cursor::default();
        // The '1' of "123" (bound 0) and the '@' (bound 5): min(16, 27 - 5).
        assert_eq!(p.next_start(hay, 0, hay.len(), &mut c), Some(16));
        assert_eq!(p.next_start(hay, 17, hay.len(), &mut c), Some(17));
        assert_eq!(p.next_start(hay, 19, hay.len(), &mut c), Some(22));
        assert_eq!(p.next_start(hay, 28, hay.len(), &mut c), None);
        assert_eq!(p.next_start(hay, 0, 10, &mut c), None);
    }
}
