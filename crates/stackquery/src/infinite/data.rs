//! [`InfiniteData`]: the pages of an infinite query and the params they were fetched with.

use serde::{Deserialize, Serialize};

/// What an infinite query caches: its pages, in order, and the page param each was
/// fetched with (`page_params[i]` fetched `pages[i]`). TanStack Query's `InfiniteData`.
///
/// It is an ordinary cache entry: `get_query_data::<InfiniteData<P, Param>>(key)` reads
/// it, `set_query_data` writes it, and a persisted infinite query stores it (every page)
/// as JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InfiniteData<P, Param> {
    /// The pages, first to last.
    pub pages: Vec<P>,
    /// The param of each page, in the same order.
    pub page_params: Vec<Param>,
}

impl<P, Param> Default for InfiniteData<P, Param> {
    fn default() -> Self {
        InfiniteData {
            pages: Vec::new(),
            page_params: Vec::new(),
        }
    }
}

/// A page and its param.
pub(crate) type End<'a, P, Param> = (&'a P, &'a Param);

impl<P, Param> InfiniteData<P, Param> {
    /// How many pages it holds.
    pub fn len(&self) -> usize {
        self.pages.len()
    }

    /// Whether it holds no page.
    pub fn is_empty(&self) -> bool {
        self.pages.is_empty()
    }

    /// Appends a page; with a bound, drops pages from the front until at most `max`
    /// remain (`None` or 0: no bound).
    pub(crate) fn push_back(&mut self, page: P, param: Param, max: Option<usize>) {
        self.pages.push(page);
        self.page_params.push(param);
        if let Some(max) = max.filter(|&m| m > 0) {
            let extra = self.pages.len().saturating_sub(max);
            self.pages.drain(..extra);
            self.page_params.drain(..extra);
        }
    }

    /// Prepends a page; with a bound, drops pages from the back.
    pub(crate) fn push_front(&mut self, page: P, param: Param, max: Option<usize>) {
        self.pages.insert(0, page);
        self.page_params.insert(0, param);
        if let Some(max) = max.filter(|&m| m > 0) {
            self.pages.truncate(max);
            self.page_params.truncate(max);
        }
    }

    /// The last page and its param, the first page and its param (`None` when empty or
    /// when the two lists disagree in length, as hand-written data may).
    pub(crate) fn ends(&self) -> Option<(End<'_, P, Param>, End<'_, P, Param>)> {
        if self.pages.len() != self.page_params.len() {
            return None;
        }
        let last = self.pages.last().zip(self.page_params.last())?;
        let first = self.pages.first().zip(self.page_params.first())?;
        Some((last, first))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_pushes_drop_from_the_other_end() {
        let mut d = InfiniteData::default();
        for i in 0..4 {
            d.push_back(i * 10, i, Some(3));
        }
        assert_eq!(
            (d.pages.clone(), d.page_params.clone()),
            (vec![10, 20, 30], vec![1, 2, 3])
        );
        d.push_front(0, 0, Some(3));
        assert_eq!(
            (d.pages.clone(), d.page_params.clone()),
            (vec![0, 10, 20], vec![0, 1, 2])
        );
        d.push_back(99, 9, None);
        assert_eq!(d.len(), 4);
    }

    #[test]
    fn mismatched_lists_have_no_ends() {
        let d = InfiniteData {
            pages: vec![1],
            page_params: Vec::<u32>::new(),
        };
        assert!(d.ends().is_none());
        assert!(InfiniteData::<u8, u8>::default().ends().is_none());
    }
}
