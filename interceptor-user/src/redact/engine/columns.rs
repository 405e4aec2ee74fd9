//! The header of a CSV table held in one field value, whose column names label the cells
//! under them as a JSON key labels its value.
//!
//! A tool result that exports a table as CSV text (`"text": "id,name,dob\n1,Jane,1985-03-15"`,
//! or a resource of type `text/csv`) loses the labels that checksum-only identifiers and dates
//! of birth need: `1985-03-15` is a date of birth under `dob`, and nothing on its own. When the
//! whole value is at hand and its first line is a header row, a candidate that starts a cell
//! gets that column's name as context before it.
//!
//! Only for a whole value (never for a segment of one, a stream's head, or a closure rescan):
//! the header can be any distance before a cell, and the decision must not depend on how the
//! value was cut.

/// The longest header line read, and how far before a cell its line start is looked for.
const MAX_LINE: usize = 4096;
/// The longest column name taken as a label.
const MAX_NAME: usize = 64;

/// A header row: the separator, and each column's name as a byte range of the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Columns {
    sep: u8,
    names: Vec<(usize, usize)>,
    /// Where the first row after the header starts.
    body: usize,
}

impl Columns {
    /// The header row `hay` starts with: at least two names (letters first; then letters,
    /// digits, ` `, `_`, `-`, `.`; at most 64 bytes; quotes around them allowed), separated by
    /// the most frequent of `,`, `;`, tab and `|`, followed by a row with as many cells. `None`
    /// for anything else (prose, JSON, a single column).
    pub(crate) fn parse(hay: &[u8]) -> Option<Columns> {
        let nl = memchr::memchr(b'\n', &hay[..hay.len().min(MAX_LINE)])?;
        let header = strip_cr(&hay[..nl]);
        let sep = *[b',', b';', b'\t', b'|']
            .iter()
            .max_by_key(|&&s| header.iter().filter(|&&b| b == s).count())?;
        let mut names = Vec::new();
        let mut at = 0;
        for field in header.split(|&b| b == sep) {
            let (s, e) = name_span(field)?;
            names.push((at + s, at + e));
            at += field.len() + 1;
        }
        if names.len() < 2 {
            return None;
        }
        let body = nl + 1;
        let row = &hay[body..];
        let end = (row.iter().take(MAX_LINE + 1))
            .position(|&b| b == b'\n')
            .unwrap_or(row.len());
        if end > MAX_LINE {
            return None;
        }
        let row = strip_cr(&row[..end]);
        (cells(row, sep) == names.len()).then_some(Columns { sep, names, body })
    }

    /// The name of the column whose cell starts at `s` (after an opening quote and blanks),
    /// and where that cell starts; `None` when `s` starts no cell of a row after the header.
    pub(crate) fn cell_at<'t>(&self, text: &'t str, s: usize) -> Option<(&'t str, usize)> {
        let hay = text.as_bytes();
        if s < self.body || s > hay.len() {
            return None;
        }
        let lo = s.saturating_sub(MAX_LINE).max(self.body);
        let line = match hay[lo..s].iter().rposition(|&b| b == b'\n') {
            Some(i) => lo + i + 1,
            None if lo == self.body => lo,
            None => return None,
        };
        let (mut col, mut cell, mut quoted) = (0, line, false);
        for (i, &b) in hay[line..s].iter().enumerate() {
            if b == b'"' {
                quoted = !quoted;
            } else if b == self.sep && !quoted {
                col += 1;
                cell = line + i + 1;
            }
        }
        let blank = |b: &u8| *b == b' ' || *b == b'\t';
        let lead = hay[cell..s].trim_ascii_start();
        let starts_cell = lead.strip_prefix(b"\"").unwrap_or(lead).iter().all(blank);
        let &(a, b) = self.names.get(col)?;
        starts_cell.then(|| (text.get(a..b).unwrap_or(""), cell))
    }
}

impl Columns {
    /// Whether `text` starts with a header row one of whose columns `named` picks by its
    /// name. Cheap when it holds no line break near its start.
    pub(crate) fn names_a(text: &str, named: impl Fn(&str) -> bool) -> bool {
        Columns::parse(text.as_bytes())
            .is_some_and(|c| (0..c.count()).any(|i| c.name(text, i).is_some_and(&named)))
    }

    /// How many columns the header names.
    pub(crate) fn count(&self) -> usize {
        self.names.len()
    }

    /// The name of column `col`.
    pub(crate) fn name<'t>(&self, text: &'t str, col: usize) -> Option<&'t str> {
        let &(a, b) = self.names.get(col)?;
        text.get(a..b)
    }

    /// Every cell of the rows after the header whose column `want` picks: its column and its
    /// span, blanks and one pair of quotes around it left out. Rows are lines (a quoted cell
    /// does not span lines here, as in [`cell_at`](Self::cell_at)).
    pub(crate) fn cells(
        &self,
        hay: &[u8],
        want: impl Fn(usize) -> bool,
    ) -> Vec<(usize, usize, usize)> {
        let mut out = Vec::new();
        let Some(body) = hay.get(self.body..) else {
            return out;
        };
        let mut line = self.body;
        for raw in body.split(|&b| b == b'\n') {
            let row = strip_cr(raw);
            let (mut col, mut cell, mut quoted) = (0, 0, false);
            for i in 0..=row.len() {
                let b = row.get(i).copied();
                if b == Some(b'"') {
                    quoted = !quoted;
                } else if b.is_none() || (b == Some(self.sep) && !quoted) {
                    if want(col) {
                        let (s, e) = unquoted(row, cell, i);
                        if s < e {
                            out.push((col, line + s, line + e));
                        }
                    }
                    col += 1;
                    cell = i + 1;
                }
            }
            line += raw.len() + 1;
        }
        out
    }
}

/// `row[s..e]` without the blanks and one pair of quotes around it.
fn unquoted(row: &[u8], mut s: usize, mut e: usize) -> (usize, usize) {
    let blank = |b: u8| b == b' ' || b == b'\t';
    while s < e && blank(row[s]) {
        s += 1;
    }
    while e > s && blank(row[e - 1]) {
        e -= 1;
    }
    if e - s >= 2 && row[s] == b'"' && row[e - 1] == b'"' {
        s += 1;
        e -= 1;
    }
    (s, e)
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// The span of a column's name in a header field, blanks and quotes around it left out.
fn name_span(field: &[u8]) -> Option<(usize, usize)> {
    let mut s = 0;
    let mut e = field.len();
    while s < e && field[s] == b' ' {
        s += 1;
    }
    while e > s && matches!(field[e - 1], b' ' | b'\r') {
        e -= 1;
    }
    if e - s >= 2 && field[s] == b'"' && field[e - 1] == b'"' {
        s += 1;
        e -= 1;
    }
    let name = &field[s..e];
    let first = *name.first()?;
    let ok = name.len() <= MAX_NAME
        && (first.is_ascii_alphabetic() || first >= 0x80)
        && name.iter().all(|&b| {
            b.is_ascii_alphanumeric() || b >= 0x80 || matches!(b, b' ' | b'_' | b'-' | b'.')
        });
    ok.then_some((s, e))
}

/// How many cells a row has (separators outside quotes, plus one).
fn cells(row: &[u8], sep: u8) -> usize {
    let mut quoted = false;
    let mut n = 1;
    for &b in row {
        if b == b'"' {
            quoted = !quoted;
        } else if b == sep && !quoted {
            n += 1;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_row_names_the_cells_under_it() {
        let t =
            "id,name,dob,bsn\r\n1,\"Doe, Jane\",1985-03-15,111222333\n2,Joe, \"1990-01-02\",x\n";
        let c = Columns::parse(t.as_bytes()).expect("header");
        let at = |v: &str| t.find(v).unwrap();
        assert_eq!(c.cell_at(t, at("1985")).map(|x| x.0), Some("dob"));
        assert_eq!(c.cell_at(t, at("111222333")).map(|x| x.0), Some("bsn"));
        assert_eq!(c.cell_at(t, at("1990")).map(|x| x.0), Some("dob"));
        assert_eq!(c.cell_at(t, at("Doe")).map(|x| x.0), Some("name"));
        // Not the start of a cell; the header itself.
        assert_eq!(c.cell_at(t, at("Jane")), None);
        assert_eq!(c.cell_at(t, at("bsn")), None);

        let t = "\"Customer\";\"Date of birth\"\n\"Jane\";\"15.03.1985\"";
        let c = Columns::parse(t.as_bytes()).expect("header");
        assert_eq!(
            c.cell_at(t, t.find("15.").unwrap()).map(|x| x.0),
            Some("Date of birth")
        );

        let t = "name\tgeburtsdatum\nJane\t15.03.1985";
        let c = Columns::parse(t.as_bytes()).expect("header");
        assert_eq!(
            c.cell_at(t, t.find("15.").unwrap()).map(|x| x.0),
            Some("geburtsdatum")
        );
    }

    #[test]
    fn prose_json_and_ragged_rows_are_no_table() {
        for t in [
            "Dear Jane, thanks for your order.\nIt ships on 1985-03-15.",
            "{\"a\": 1,\n\"b\": 2}",
            "id,name,dob\n1,Jane\n",
            "id,name,dob",
            "single\nrow",
            "id,,dob\n1,2,3",
            "1,2,3\n4,5,6",
        ] {
            assert_eq!(Columns::parse(t.as_bytes()), None, "{t:?}");
        }
    }
}
