//! Cursor paging shared by the list RPCs: `page_size` bounded, and an opaque
//! `page_token` that names the list it came from and the last item of the page before
//! (a position on the list's index, never an offset, so pages stay right while rows are
//! added or removed).

use toolplane_core::Violations;
use uuid::Uuid;

use crate::error::ApiError;

pub const DEFAULT_PAGE_SIZE: u32 = 100;
pub const MAX_PAGE_SIZE: u32 = 1000;

/// One page request of the list `kind` (e.g. "agents").
#[derive(Debug)]
pub struct PageRequest {
    kind: &'static str,
    /// Items per page.
    pub size: usize,
    /// Where the previous page ended, as the list's cursor text.
    pub after: Option<String>,
}

impl PageRequest {
    pub fn parse(kind: &'static str, page_size: u32, page_token: &str) -> Result<Self, ApiError> {
        let size = match page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if n > MAX_PAGE_SIZE => {
                return Err(Violations::single("page_size", format!("must be at most {MAX_PAGE_SIZE}")).into());
            }
            n => n,
        } as usize;
        let after = if page_token.is_empty() {
            None
        } else {
            let bad = || Violations::single("page_token", format!("is not a page token of this {kind} list"));
            let bytes = hex::decode(page_token).map_err(|_| bad())?;
            let text = String::from_utf8(bytes).map_err(|_| bad())?;
            let cursor = text
                .strip_prefix(kind)
                .and_then(|rest| rest.strip_prefix(':'))
                .ok_or_else(bad)?;
            Some(cursor.to_owned())
        };
        Ok(Self { kind, size, after })
    }

    /// The cursor as an id, for lists ordered by id.
    pub fn after_id(&self) -> Result<Option<Uuid>, ApiError> {
        self.after
            .as_deref()
            .map(|s| {
                Uuid::parse_str(s).map_err(|_| {
                    Violations::single("page_token", format!("is not a page token of this {} list", self.kind)).into()
                })
            })
            .transpose()
    }

    /// How many items to ask the store for: one more than a page, to know if another
    /// follows.
    pub fn fetch(&self) -> usize {
        self.size + 1
    }

    /// Cuts `items` (fetched with [`Self::fetch`]) to a page, and the token of the next
    /// page (empty when this is the last), made from the page's last item by `cursor`.
    pub fn finish<T>(&self, mut items: Vec<T>, cursor: impl Fn(&T) -> String) -> (Vec<T>, String) {
        if items.len() <= self.size {
            return (items, String::new());
        }
        items.truncate(self.size);
        let next = items
            .last()
            .map(|last| hex::encode(format!("{}:{}", self.kind, cursor(last))))
            .unwrap_or_default();
        (items, next)
    }
}

#[cfg(test)]
#[path = "paging_tests.rs"]
mod tests;
