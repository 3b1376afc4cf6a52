//! How commands print: pretty JSON under `--json`, else text, and the one
//! table printer the text tables share.
use serde::Serialize;

use super::Result;

/// The output format a command was asked for.
#[derive(Clone, Copy, Debug)]
pub(super) struct Output {
    pub json: bool,
}

impl Output {
    /// `value` as pretty JSON under `--json`; else whatever `text` prints.
    pub fn show<T: Serialize + ?Sized>(self, value: &T, text: impl FnOnce(&T)) -> Result<()> {
        if self.json {
            print_json(value)
        } else {
            text(value);
            Ok(())
        }
    }
}

pub(super) fn print_json<T: Serialize + ?Sized>(value: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// An absent value in text output.
pub(super) fn dash<T: ToString>(value: &Option<T>) -> String {
    value.as_ref().map_or_else(|| "-".to_owned(), T::to_string)
}

#[derive(Clone, Copy, Debug)]
enum Align {
    Left,
    Right,
}

/// A table column: header and the width its cells are padded to (0: no
/// padding, for a last column of free text).
#[derive(Clone, Copy, Debug)]
pub(super) struct Column {
    header: &'static str,
    width: usize,
    align: Align,
}

impl Column {
    pub const fn left(header: &'static str, width: usize) -> Self {
        Self {
            header,
            width,
            align: Align::Left,
        }
    }

    pub const fn right(header: &'static str, width: usize) -> Self {
        Self {
            header,
            width,
            align: Align::Right,
        }
    }

    pub fn header(&self) -> &'static str {
        self.header
    }

    pub fn width(&self) -> usize {
        self.width
    }

    pub fn is_right_aligned(&self) -> bool {
        matches!(self.align, Align::Right)
    }

    fn pad(&self, cell: &str) -> String {
        match self.align {
            Align::Left => format!("{cell:<width$}", width = self.width),
            Align::Right => format!("{cell:>width$}", width = self.width),
        }
    }
}

/// A text table of `N` columns: a header line, then one line per row, cells
/// padded to their column's width and joined by `separator`.
pub(super) struct Table<const N: usize> {
    pub columns: [Column; N],
    pub separator: &'static str,
}

impl<const N: usize> Table<N> {
    pub fn print(&self, rows: impl IntoIterator<Item = [String; N]>) {
        println!("{}", self.header());
        for row in rows {
            println!("{}", self.line(&row));
        }
    }

    fn header(&self) -> String {
        self.line(&self.columns.map(|c| c.header))
    }

    fn line(&self, cells: &[impl AsRef<str>; N]) -> String {
        let padded: Vec<String> = self
            .columns
            .iter()
            .zip(cells)
            .map(|(column, cell)| column.pad(cell.as_ref()))
            .collect();
        padded.join(self.separator)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_are_padded_to_their_column_and_joined() {
        let table = Table {
            columns: [
                Column::left("NAME", 6),
                Column::right("AGE", 5),
                Column::left("NOTE", 0),
            ],
            separator: "  ",
        };
        assert_eq!(table.header(), "NAME      AGE  NOTE");
        assert_eq!(
            table.line(&["c1", "3s", "free text"]),
            "c1         3s  free text"
        );
        // Too long for the column: printed whole, as `format!` does.
        assert_eq!(
            table.line(&["container", "1234567s", ""]),
            "container  1234567s  "
        );
    }
}
