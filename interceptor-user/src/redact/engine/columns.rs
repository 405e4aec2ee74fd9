//! The header of a CSV table held in one field value, whose column names label the cells
//! under them as a JSON key labels its value.
//!
//! A tool result that exports a table as CSV text (`"text": "id,name,dob\n1,Jane,1985-03-15"`,
//! or a resource of type `text/csv`) loses the labels that checksum-only identifiers and dates
//! of birth need: `1985-03-15` is a date of birth under `dob`, and nothing on its own. When the
//! whole value is at hand and its first line is a header row, a candidate that starts a cell
//! gets that column's name as context before it.
//!
//! A Markdown table, as tools that answer a language model often format their results, is read
//! the same way: its header row (`| name | mobile |`, framed by `|` or not) is the first line
//! of the value that starts with `|`, within its first 4 KB (a title or a sentence may come
//! before it), and must be followed by a delimiter row (`|---|:---:|`); its rows end at the
//! first line that does not start with `|`. Quotes mean nothing there.
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
    /// A Markdown table: rows start with `|`, quotes mean nothing.
    markdown: bool,
    /// Where the rows end: the first line after the body that does not start with `|` in a
    /// Markdown table, the end of the value otherwise.
    end: usize,
}

impl Columns {
    /// The header row `hay` starts with: at least two names (letters first; then letters,
    /// digits, ` `, `_`, `-`, `.`; at most 64 bytes; quotes around them allowed), separated by
    /// the most frequent of `,`, `;`, tab and `|`, followed by a row with as many cells. `None`
    /// for anything else (prose, JSON, a single column).
    pub(crate) fn parse(hay: &[u8]) -> Option<Columns> {
        if let Some(table) = Columns::markdown(hay) {
            return Some(table);
        }
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
        (cells(row, sep) == names.len()).then_some(Columns {
            sep,
            names,
            body,
            markdown: false,
            end: hay.len(),
        })
    }

    /// The Markdown table `hay` holds (see the module docs): its header is the first line
    /// starting with `|` in the first [`MAX_LINE`] bytes, with at least two names, followed by
    /// a delimiter row and a row with as many cells.
    fn markdown(hay: &[u8]) -> Option<Columns> {
        let head = &hay[..hay.len().min(MAX_LINE)];
        let mut at = 0;
        let start = loop {
            let lead = head[at..]
                .iter()
                .take_while(|&&b| b == b' ' || b == b'\t')
                .count();
            if head.get(at + lead) == Some(&b'|') {
                break at;
            }
            at += memchr::memchr(b'\n', head.get(at..)?)? + 1;
        };
        let line_end = |from: usize| -> Option<usize> {
            let n = hay[from..]
                .iter()
                .take(MAX_LINE + 1)
                .position(|&b| b == b'\n')
                .unwrap_or(hay.len() - from);
            (n <= MAX_LINE).then_some(from + n)
        };
        let header_end = line_end(start)?;
        let (fs, fe) = framed(hay, start, header_end);
        let mut names = Vec::new();
        let mut at = fs;
        for field in hay[fs..fe].split(|&b| b == b'|') {
            let (s, e) = name_span(field)?;
            names.push((at + s, at + e));
            at += field.len() + 1;
        }
        if names.len() < 2 || header_end >= hay.len() {
            return None;
        }
        // The delimiter row, then a row as wide as the header.
        let delim = header_end + 1;
        let delim_end = line_end(delim)?;
        let d = strip_cr(&hay[delim..delim_end]);
        if !d.contains(&b'-') || !d.iter().all(|b| b"|:- \t".contains(b)) {
            return None;
        }
        let body = (delim_end + 1).min(hay.len());
        let row_end = line_end(body)?;
        let (rs, re) = framed(hay, body, row_end);
        let row = &hay[rs..re];
        let is_row = |line: &[u8]| line.trim_ascii_start().first() == Some(&b'|');
        if !(is_row(&hay[body..row_end])
            && 1 + row.iter().filter(|&&b| b == b'|').count() == names.len())
        {
            return None;
        }
        // The rows end at the first line that is none.
        let mut end = body;
        while end < hay.len() {
            let next = memchr::memchr(b'\n', &hay[end..]).map_or(hay.len(), |n| end + n);
            if !is_row(&hay[end..next]) {
                break;
            }
            end = (next + 1).min(hay.len());
        }
        Some(Columns {
            sep: b'|',
            names,
            body,
            markdown: true,
            end,
        })
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
        let mut from = line;
        if self.markdown {
            // (A row starts with `|`, which opens its first cell.)
            let lead = hay[line..s]
                .iter()
                .take_while(|&&b| b == b' ' || b == b'\t');
            let pipe = line + lead.count();
            if hay.get(pipe) != Some(&b'|') || pipe >= s || s >= self.end {
                return None;
            }
            (cell, from) = (pipe + 1, pipe + 1);
        }
        for (i, &b) in hay[from..s].iter().enumerate() {
            if b == b'"' && !self.markdown {
                quoted = !quoted;
            } else if b == self.sep && !quoted {
                col += 1;
                cell = from + i + 1;
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
        let Some(body) = hay.get(self.body..self.end.min(hay.len())) else {
            return out;
        };
        let mut line = self.body;
        for raw in body.split(|&b| b == b'\n') {
            let row = strip_cr(raw);
            let (mut col, mut cell, mut quoted) = (0, 0, false);
            let mut from = 0;
            if self.markdown {
                // The table ends at the first line that is no row; a row's first `|` opens
                // its first cell.
                let lead = row.iter().take_while(|&&b| b == b' ' || b == b'\t').count();
                if row.get(lead) != Some(&b'|') {
                    break;
                }
                (cell, from) = (lead + 1, lead + 1);
            }
            for i in from..=row.len() {
                let b = row.get(i).copied();
                if b == Some(b'"') && !self.markdown {
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

/// The span of the line `hay[s..e]` inside its frame: without blanks and a `|` at either end
/// (`| a | b |` and `a | b` are both rows of a Markdown table).
fn framed(hay: &[u8], s: usize, e: usize) -> (usize, usize) {
    let line = strip_cr(&hay[s..e]);
    let (mut a, mut b) = (0, line.len());
    while a < b && matches!(line[a], b' ' | b'\t') {
        a += 1;
    }
    while b > a && matches!(line[b - 1], b' ' | b'\t') {
        b -= 1;
    }
    if a < b && line[a] == b'|' {
        a += 1;
    }
    if b > a && line[b - 1] == b'|' {
        b -= 1;
    }
    (s + a, s + b)
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
    fn a_markdown_table_names_the_cells_under_it() {
        let t = "Customers found:\n\n| Name | Mobile | Date of birth |\n|---|:---:|---|\n\
                 | Jane \"JJ\" Doe | 4915112345678 | 1985-03-15 |\n| Joe | 4915112345679 | 1990-01-02 |\n\
                 \nTotal: 1985-04-01 4915112345670";
        let c = Columns::parse(t.as_bytes()).expect("table");
        let at = |v: &str| t.find(v).unwrap();
        assert_eq!(
            c.cell_at(t, at("4915112345678")).map(|x| x.0),
            Some("Mobile")
        );
        assert_eq!(c.cell_at(t, at("1990")).map(|x| x.0), Some("Date of birth"));
        assert_eq!(c.cell_at(t, at("Jane")).map(|x| x.0), Some("Name"));
        // After the table, in the header, inside a cell.
        assert_eq!(c.cell_at(t, at("1985-04")), None);
        assert_eq!(c.cell_at(t, at("4915112345670")), None);
        assert_eq!(c.cell_at(t, at("Mobile")), None);
        assert_eq!(c.cell_at(t, at("Doe")), None);
        let mobile: Vec<&str> = c
            .cells(t.as_bytes(), |col| col == 1)
            .iter()
            .map(|&(_, s, e)| &t[s..e])
            .collect();
        assert_eq!(mobile, ["4915112345678", "4915112345679"]);
        // Without the outer frame.
        let t = "name | phone\n--- | ---\nJane | 4915112345678\n";
        let c = Columns::parse(t.as_bytes()).expect("table");
        assert_eq!(
            c.cell_at(t, t.find("4915").unwrap()).map(|x| x.0),
            Some("phone")
        );
        // No delimiter row, a ragged row, a lone column: no table.
        for t in [
            "| a | b |\n| 1 | 2 |",
            "| a | b |\n|---|---|\n| 1 |",
            "| a |\n|---|\n| 1 |",
            "|---|---|\n| 1 | 2 |",
        ] {
            assert_eq!(Columns::parse(t.as_bytes()), None, "{t:?}");
        }
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
