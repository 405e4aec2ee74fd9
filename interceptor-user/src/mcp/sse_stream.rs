//! A streaming `text/event-stream` tokenizer: it hands out the pieces of events as bytes
//! arrive, without ever holding an event whole, so a 100 MB `data:` field costs a few bytes of
//! state. [`super::SseParser`] assembles whole events for the (small) events that need it;
//! observers and rewriters of arbitrarily large events use this.
//!
//! Framing follows the HTML event-stream rules: lines end with CRLF, LF or CR; a blank line
//! ends an event; a line starting with `:` is a comment; `field: value` (one space after the
//! colon removed); a UTF-8 BOM at the very start is skipped.

/// One piece of an event stream, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum SsePiece<'a> {
    /// A `data` line starts (every line, also an empty one).
    DataLineStart,
    /// Bytes of the current `data` line's value (more may follow).
    Data(&'a [u8]),
    /// A complete non-data field (`event`, `id`, `retry`, or an unknown one), its value cut at
    /// [`MAX_FIELD_VALUE`] bytes.
    Field { name: &'a [u8], value: &'a [u8] },
    /// A comment line starts (`:`; its text is not reported). Servers send them to keep an
    /// idle stream alive.
    Comment,
    /// A blank line: the event is complete.
    EventEnd,
}

/// Longest value kept for non-data fields; the rest is dropped.
pub const MAX_FIELD_VALUE: usize = 4096;
/// Longest field name recognised; longer names are unknown fields.
const MAX_FIELD_NAME: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line.
    LineStart,
    /// Reading a field name.
    Name,
    /// After `data:`, before the optional space.
    DataSpace,
    /// Inside a data value.
    DataValue,
    /// After `name:`, before the optional space.
    ValueSpace,
    /// Inside a non-data value.
    Value,
    /// Skipping a comment or the rest of an overlong line.
    Skip,
}

/// The incremental tokenizer (bounded state: a field name and one non-data value).
#[derive(Debug, Clone)]
pub struct SseTokenizer {
    state: State,
    name: Vec<u8>,
    value: Vec<u8>,
    /// A CR ended the last line: a LF right after it belongs to it.
    after_cr: bool,
    /// Bytes of a possible BOM at the start of the stream still to check.
    bom: usize,
    /// The current event has content (a blank line after nothing dispatches nothing, but the
    /// piece is still reported so callers can reset).
    started: bool,
}

impl Default for SseTokenizer {
    fn default() -> Self {
        Self::new()
    }
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

impl SseTokenizer {
    pub fn new() -> SseTokenizer {
        SseTokenizer {
            state: State::LineStart,
            name: Vec::new(),
            value: Vec::new(),
            after_cr: false,
            bom: 0,
            started: false,
        }
    }

    /// Whether an event has begun and not ended.
    pub fn in_event(&self) -> bool {
        self.started || self.state != State::LineStart
    }

    /// Feeds the next bytes, calling `f` for every piece they complete or carry.
    pub fn push(&mut self, mut chunk: &[u8], f: &mut impl FnMut(SsePiece<'_>)) {
        // A BOM is only skipped at the very start of the stream.
        while self.bom < BOM.len() && !chunk.is_empty() && self.state == State::LineStart {
            if chunk[0] == BOM[self.bom] {
                self.bom += 1;
                chunk = &chunk[1..];
            } else {
                if self.bom > 0 {
                    // A partial BOM was data: it starts a field name.
                    let seen = &BOM[..self.bom];
                    self.bom = BOM.len();
                    self.state = State::Name;
                    self.name.extend_from_slice(seen);
                    self.started = true;
                }
                self.bom = BOM.len();
            }
        }
        if self.after_cr && !chunk.is_empty() {
            self.after_cr = false;
            if chunk[0] == b'\n' {
                chunk = &chunk[1..];
            }
        }
        let mut i = 0;
        while i < chunk.len() {
            match self.state {
                State::DataValue | State::Skip | State::Value => {
                    // Run to the end of the line in one step.
                    let rest = &chunk[i..];
                    let n = rest
                        .iter()
                        .position(|&b| b == b'\n' || b == b'\r')
                        .unwrap_or(rest.len());
                    match self.state {
                        State::DataValue if n > 0 => f(SsePiece::Data(&rest[..n])),
                        State::Value => {
                            let room = MAX_FIELD_VALUE.saturating_sub(self.value.len());
                            self.value.extend_from_slice(&rest[..n.min(room)]);
                        }
                        _ => {}
                    }
                    i += n;
                    if i < chunk.len() {
                        let cr = chunk[i] == b'\r';
                        i += 1;
                        if cr {
                            if i == chunk.len() {
                                self.after_cr = true;
                            } else if chunk[i] == b'\n' {
                                i += 1;
                            }
                        }
                        self.end_line(f);
                    }
                }
                _ => {
                    let b = chunk[i];
                    i += 1;
                    if b == b'\n' || b == b'\r' {
                        if b == b'\r' {
                            if i == chunk.len() {
                                self.after_cr = true;
                            } else if chunk[i] == b'\n' {
                                i += 1;
                            }
                        }
                        self.end_line(f);
                        continue;
                    }
                    self.byte(b, f);
                }
            }
        }
    }

    /// A byte of a line that is not a line break, outside value runs.
    fn byte(&mut self, b: u8, f: &mut impl FnMut(SsePiece<'_>)) {
        match self.state {
            State::LineStart => {
                if b == b':' {
                    f(SsePiece::Comment);
                    self.state = State::Skip;
                } else {
                    self.started = true;
                    self.name.clear();
                    self.name.push(b);
                    self.state = State::Name;
                }
            }
            State::Name => {
                if b == b':' {
                    if self.name == b"data" {
                        f(SsePiece::DataLineStart);
                        self.state = State::DataSpace;
                    } else {
                        self.value.clear();
                        self.state = State::ValueSpace;
                    }
                } else if self.name.len() < MAX_FIELD_NAME {
                    self.name.push(b);
                } else {
                    // No field of interest is this long: ignore the line.
                    self.state = State::Skip;
                }
            }
            State::DataSpace => {
                self.state = State::DataValue;
                if b != b' ' {
                    f(SsePiece::Data(&[b]));
                }
            }
            State::ValueSpace => {
                self.state = State::Value;
                if b != b' ' {
                    self.value.push(b);
                }
            }
            State::DataValue | State::Value | State::Skip => {
                unreachable!("value runs are handled in push")
            }
        }
    }

    fn end_line(&mut self, f: &mut impl FnMut(SsePiece<'_>)) {
        match self.state {
            State::LineStart => {
                self.started = false;
                f(SsePiece::EventEnd);
            }
            State::Name => {
                // A field without a colon: its value is empty.
                if self.name == b"data" {
                    f(SsePiece::DataLineStart);
                } else {
                    f(SsePiece::Field {
                        name: &self.name,
                        value: b"",
                    });
                }
            }
            State::DataSpace | State::DataValue => {}
            State::ValueSpace | State::Value => f(SsePiece::Field {
                name: &self.name,
                value: &self.value,
            }),
            State::Skip => {}
        }
        self.state = State::LineStart;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mcp::{SseEvent, SseParser};
    use proptest::prelude::*;

    /// Reassembles events from pieces, the way [`SseParser`] reports them.
    fn assemble(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut t = SseTokenizer::new();
        let mut out = Vec::new();
        let mut cur = SseEvent::default();
        let mut lines = 0usize;
        let mut data: Vec<u8> = Vec::new();
        for c in chunks {
            t.push(c, &mut |p| match p {
                SsePiece::DataLineStart => {
                    if lines > 0 {
                        data.push(b'\n');
                    }
                    lines += 1;
                }
                SsePiece::Data(d) => data.extend_from_slice(d),
                SsePiece::Field { name, value } => {
                    let v = String::from_utf8_lossy(value).into_owned();
                    match name {
                        b"event" => cur.event = Some(v),
                        b"id" => cur.id = Some(v),
                        b"retry" => cur.retry = v.parse().ok(),
                        _ => {}
                    }
                }
                SsePiece::Comment => {}
                SsePiece::EventEnd => {
                    if lines > 0 {
                        cur.data = String::from_utf8_lossy(&data).into_owned();
                        out.push(std::mem::take(&mut cur));
                    } else {
                        cur = SseEvent::default();
                    }
                    data.clear();
                    lines = 0;
                }
            });
        }
        out
    }

    #[test]
    fn pieces_of_a_simple_stream() {
        let mut t = SseTokenizer::new();
        let mut got = Vec::new();
        t.push(
            b"event: message\r\ndata: {\"a\":1}\ndata:x\n: comment\n\n",
            &mut |p| {
                got.push(match p {
                    SsePiece::DataLineStart => "L".to_string(),
                    SsePiece::Data(d) => format!("D{}", String::from_utf8_lossy(d)),
                    SsePiece::Field { name, value } => format!(
                        "F{}={}",
                        String::from_utf8_lossy(name),
                        String::from_utf8_lossy(value)
                    ),
                    SsePiece::Comment => "C".to_string(),
                    SsePiece::EventEnd => "E".to_string(),
                })
            },
        );
        assert_eq!(
            got,
            ["Fevent=message", "L", "D{\"a\":1}", "L", "Dx", "C", "E"]
        );
    }

    #[test]
    fn a_huge_data_line_is_never_held() {
        let mut t = SseTokenizer::new();
        let mut total = 0usize;
        let mut biggest = 0usize;
        t.push(b"data: ", &mut |_| {});
        let block = vec![b'x'; 1 << 20];
        for _ in 0..32 {
            t.push(&block, &mut |p| {
                if let SsePiece::Data(d) = p {
                    total += d.len();
                    biggest = biggest.max(d.len());
                }
            });
        }
        assert_eq!(total, 32 << 20);
        assert!(biggest <= 1 << 20);
        assert!(t.name.capacity() <= 64 && t.value.capacity() <= MAX_FIELD_VALUE * 2);
    }

    fn stream() -> impl Strategy<Value = Vec<u8>> {
        let line = prop_oneof![
            "[a-z{}\":, ]{0,12}".prop_map(|s| format!("data: {s}")),
            "[a-z{}\":,]{0,12}".prop_map(|s| format!("data:{s}")),
            Just("data".to_string()),
            "[a-z]{0,6}".prop_map(|s| format!("event: {s}")),
            "[0-9]{1,4}".prop_map(|s| format!("id: {s}")),
            Just(": comment".to_string()),
            Just(String::new()),
        ];
        let eol = prop_oneof![Just("\n"), Just("\r\n"), Just("\r")];
        proptest::collection::vec((line, eol), 0..24).prop_map(|ls| {
            let mut s = String::new();
            for (l, e) in ls {
                s.push_str(&l);
                s.push_str(e);
            }
            s.push_str("\n\n");
            s.into_bytes()
        })
    }

    proptest! {
        /// Whatever the split, the pieces reassemble into the events the whole-event parser
        /// reports.
        #[test]
        fn any_split_gives_the_parser_s_events(s in stream(), cuts in proptest::collection::vec(0usize..400, 0..6)) {
            let mut want = SseParser::new(1 << 20).push(&s).unwrap();
            want.retain(|e| !e.dataless);
            for e in &mut want {
                e.retry = None;
            }
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(s.len())).collect();
            cuts.sort();
            let mut parts: Vec<&[u8]> = Vec::new();
            let mut at = 0;
            for c in cuts {
                parts.push(&s[at..c]);
                at = c;
            }
            parts.push(&s[at..]);
            let mut got = assemble(&parts);
            for e in &mut got {
                e.retry = None;
            }
            prop_assert_eq!(got, want);
        }
    }
}
