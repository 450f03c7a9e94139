//! Rows read back from either database ([`Row`], [`Cell`]) and the types read from them
//! ([`FromColumns`]): a query names the type it returns, and its columns are read in order, so
//! that no query spells out how each of its columns becomes a field.

use super::StoreError;

/// One value read from a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cell {
    /// SQL NULL.
    Null,
    /// An integer (booleans read as 0 or 1).
    Int(i64),
    /// Text.
    Text(String),
    /// Bytes.
    Bytes(Vec<u8>),
}

/// A row read back, the same whichever database it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row(pub Vec<Cell>);

impl Row {
    fn cell(&self, i: usize) -> Result<&Cell, StoreError> {
        self.0
            .get(i)
            .ok_or_else(|| StoreError::Decode(format!("no column {i}")))
    }

    fn mismatch(&self, i: usize, wanted: &str) -> StoreError {
        StoreError::Decode(format!("column {i} is {:?}, not {wanted}", self.0.get(i)))
    }

    /// An integer column; NULL is an error.
    pub fn int(&self, i: usize) -> Result<i64, StoreError> {
        self.opt_int(i)?
            .ok_or_else(|| self.mismatch(i, "an integer"))
    }

    /// A nullable integer column.
    pub fn opt_int(&self, i: usize) -> Result<Option<i64>, StoreError> {
        match self.cell(i)? {
            Cell::Null => Ok(None),
            Cell::Int(v) => Ok(Some(*v)),
            _ => Err(self.mismatch(i, "an integer")),
        }
    }

    /// A count: an integer column read as `u64`, NULL and negatives as 0.
    pub fn count(&self, i: usize) -> Result<u64, StoreError> {
        Ok(self.opt_int(i)?.unwrap_or(0).max(0) as u64)
    }

    /// A boolean column.
    pub fn bool(&self, i: usize) -> Result<bool, StoreError> {
        Ok(self.int(i)? != 0)
    }

    /// A nullable text column.
    pub fn opt_text(&self, i: usize) -> Result<Option<String>, StoreError> {
        match self.cell(i)? {
            Cell::Null => Ok(None),
            Cell::Text(v) => Ok(Some(v.clone())),
            _ => Err(self.mismatch(i, "text")),
        }
    }

    /// A text column; NULL is an error.
    pub fn text(&self, i: usize) -> Result<String, StoreError> {
        self.opt_text(i)?.ok_or_else(|| self.mismatch(i, "text"))
    }

    /// A bytes column; NULL is an error.
    pub fn bytes(&self, i: usize) -> Result<&[u8], StoreError> {
        match self.cell(i)? {
            Cell::Bytes(v) => Ok(v),
            _ => Err(self.mismatch(i, "bytes")),
        }
    }
}

/// Reads a row's columns in order, each [`FromColumns`] value taking as many as it needs.
pub struct Columns<'r> {
    row: &'r Row,
    next: usize,
}

impl<'r> Columns<'r> {
    /// The columns of `row`, from the first.
    pub fn new(row: &'r Row) -> Self {
        Columns { row, next: 0 }
    }

    /// The columns of `row` from the one at `start`.
    pub fn at(row: &'r Row, start: usize) -> Self {
        Columns { row, next: start }
    }

    /// The next value, of whatever type is asked for.
    #[allow(clippy::should_implement_trait)]
    pub fn next<T: FromColumns>(&mut self) -> Result<T, StoreError> {
        T::take(self)
    }

    /// The index of the next column, and the cursor past it.
    fn advance(&mut self) -> usize {
        self.next += 1;
        self.next - 1
    }
}

/// A value read from the next column (or columns) of a row.
pub trait FromColumns: Sized {
    /// Takes the value from the columns at the cursor, moving it past them.
    fn take(columns: &mut Columns<'_>) -> Result<Self, StoreError>;

    /// The value read from a whole row, from its first column.
    fn from_row(row: &Row) -> Result<Self, StoreError> {
        Self::take(&mut Columns::new(row))
    }
}

/// Implements [`FromColumns`] for column types by the [`Row`] reader that reads them.
macro_rules! column_reader {
    ($($ty:ty => $read:ident),* $(,)?) => {$(
        impl FromColumns for $ty {
            fn take(columns: &mut Columns<'_>) -> Result<Self, StoreError> {
                let i = columns.advance();
                columns.row.$read(i)
            }
        }
    )*};
}

column_reader! {
    i64 => int,
    Option<i64> => opt_int,
    u64 => count,
    bool => bool,
    String => text,
    Option<String> => opt_text,
}

impl FromColumns for u32 {
    fn take(columns: &mut Columns<'_>) -> Result<Self, StoreError> {
        Ok(u32::try_from(columns.next::<u64>()?).unwrap_or(u32::MAX))
    }
}

impl FromColumns for u16 {
    fn take(columns: &mut Columns<'_>) -> Result<Self, StoreError> {
        Ok(u16::try_from(columns.next::<i64>()?).unwrap_or(0))
    }
}

impl FromColumns for Option<u64> {
    fn take(columns: &mut Columns<'_>) -> Result<Self, StoreError> {
        Ok(columns.next::<Option<i64>>()?.map(|v| v.max(0) as u64))
    }
}

impl FromColumns for Option<u16> {
    fn take(columns: &mut Columns<'_>) -> Result<Self, StoreError> {
        Ok(columns
            .next::<Option<i64>>()?
            .and_then(|v| u16::try_from(v).ok()))
    }
}

impl FromColumns for Vec<u8> {
    fn take(columns: &mut Columns<'_>) -> Result<Self, StoreError> {
        let i = columns.advance();
        columns.row.bytes(i).map(<[u8]>::to_vec)
    }
}

impl FromColumns for jiff::Timestamp {
    fn take(columns: &mut Columns<'_>) -> Result<Self, StoreError> {
        Ok(super::queries::from_ms(columns.next()?))
    }
}

impl FromColumns for Option<jiff::Timestamp> {
    fn take(columns: &mut Columns<'_>) -> Result<Self, StoreError> {
        Ok(columns.next::<Option<i64>>()?.map(super::queries::from_ms))
    }
}

/// Implements [`FromColumns`] for tuples: each member from the next columns, in order.
macro_rules! tuple_reader {
    ($(($($t:ident),+)),* $(,)?) => {$(
        impl<$($t: FromColumns),+> FromColumns for ($($t,)+) {
            fn take(columns: &mut Columns<'_>) -> Result<Self, StoreError> {
                Ok(($(columns.next::<$t>()?,)+))
            }
        }
    )*};
}

tuple_reader! {
    (A),
    (A, B),
    (A, B, C),
    (A, B, C, D),
    (A, B, C, D, E),
}

/// Implements [`FromColumns`] for a struct whose fields are read from the next columns in the
/// order listed (the query's `SELECT` list must be in that order).
/// Fields after a `;` are not read but given the value that follows them.
macro_rules! from_columns {
    ($ty:path { $($field:ident),+ $(; $($rest:ident: $value:expr),+)? $(,)? }) => {
        impl $crate::store::row::FromColumns for $ty {
            fn take(
                columns: &mut $crate::store::row::Columns<'_>,
            ) -> Result<Self, $crate::store::StoreError> {
                $(let $field = columns.next()?;)+
                Ok(Self { $($field,)+ $($($rest: $value),+)? })
            }
        }
    };
}
pub(crate) use from_columns;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_read_counts_and_refuse_the_wrong_type() {
        let row = Row(vec![
            Cell::Int(-3),
            Cell::Null,
            Cell::Text("a".into()),
            Cell::Bytes(vec![1]),
        ]);
        assert_eq!(row.count(0).unwrap(), 0);
        assert_eq!(row.count(1).unwrap(), 0);
        assert_eq!(row.opt_int(1).unwrap(), None);
        assert_eq!(row.text(2).unwrap(), "a");
        assert_eq!(row.bytes(3).unwrap(), [1]);
        assert!(row.int(2).is_err());
        assert!(row.text(1).is_err());
        assert!(row.int(9).is_err());
    }

    #[test]
    fn values_take_their_columns_in_order() {
        let row = Row(vec![
            Cell::Int(7),
            Cell::Text("m".into()),
            Cell::Null,
            Cell::Int(-1),
            Cell::Int(1),
        ]);
        let read: (i64, String, Option<String>, u64, bool) = FromColumns::from_row(&row).unwrap();
        assert_eq!(read, (7, "m".to_owned(), None, 0, true));
        assert!(<(i64, i64)>::from_row(&Row(vec![Cell::Int(1)])).is_err());
    }
}
