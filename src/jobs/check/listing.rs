//! Checking by listing: one ListObjectsV2 page answers for up to 1,000 objects where a HEAD
//! answers for one. The objects to check are sorted by hash, and content keys sort by hash
//! too, so a range of them is walked beside the listing of the data prefix, page after page;
//! where no needed object lies between two pages, the listing jumps ahead (`start-after`).
//!
//! Listing pays only where the store holds little else between the needed objects. In a
//! bucket many times the job's size, a page answers for a handful of them, so `auto` goes on
//! listing only while a range's pages answer for [`MIN_PER_PAGE`] each or more and asks for
//! the rest one by one (hashes spread evenly, so the first pages tell what the next would).

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::Found;
use crate::hash::ContentHash;
use crate::store::ListPage;
use crate::store::layout::{data_key, data_prefix, legacy_data_key};
use crate::transfer::{Transfer, TransferError};

/// `auto` lists only for this many objects or more: below it, HEADs (`transfer.workers` at a
/// time) take a fraction of a second anyway.
pub(super) const MIN_OBJECTS: usize = 1000;

/// Objects a range listed on its own holds at least. A range's last page runs past its end
/// (a page is up to 1,000 keys whatever is needed): more ranges list in parallel, fewer list
/// less that is not needed.
const MIN_RANGE_OBJECTS: usize = 250;

/// `auto` goes on listing while a range's pages answer for this many objects each or more.
/// Fewer, and a HEAD each is cheaper: S3 prices a LIST at 12.5 times a HEAD.
const MIN_PER_PAGE: usize = 16;

/// How `check` asks the store about each object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Lookup {
    /// List where that takes fewer requests (an S3 store, 1,000 objects or more, pages
    /// answering for 16 or more), else a HEAD per object.
    #[default]
    Auto,
    /// List the data prefix, whatever else it holds.
    List,
    /// A HEAD per object.
    Head,
}

/// Lists the keys of `objects` (sorted by hash, distinct) in ranges, `transfer.workers` at a
/// time, and hands what the store holds of each to `found`. Returns the objects left to ask
/// for one by one (with `fall_back`, where pages answered for too few), and the pages listed.
pub(super) async fn look_up_all(
    t: &Transfer,
    objects: &[(ContentHash, u64)],
    fall_back: bool,
    cancel: &CancellationToken,
    mut found: impl FnMut(ContentHash, u64, Found),
) -> Result<(Vec<(ContentHash, u64)>, u64), TransferError> {
    // A range's last page runs past its end (up to 1,000 keys it does not need), so a range
    // is not made smaller than a few hundred objects.
    let workers = t.settings.workers.max(1);
    let range = objects.len().div_ceil(workers).max(MIN_RANGE_OBJECTS);
    let mut listed = futures::stream::iter(objects.chunks(range))
        .map(|range| look_up(t, range, fall_back, cancel))
        .buffer_unordered(workers);
    let (mut to_ask, mut pages) = (Vec::new(), 0);
    while let Some(l) = listed.next().await {
        let l = l?;
        pages += l.pages;
        for (hash, size, f) in l.found {
            found(hash, size, f);
        }
        to_ask.extend(l.to_ask);
    }
    Ok((to_ask, pages))
}

/// What listing one range of objects found.
#[derive(Default)]
struct Listed {
    found: Vec<(ContentHash, u64, Found)>,
    /// Objects left to ask for one by one: pages answered for too few of them.
    to_ask: Vec<(ContentHash, u64)>,
    pages: u64,
}

/// Lists the keys of `objects` (sorted by hash, distinct) and says what the store holds of
/// each. With `fall_back`, stops listing once the pages answered for fewer than
/// [`MIN_PER_PAGE`] each, and leaves the rest in `to_ask`.
async fn look_up(
    t: &Transfer,
    objects: &[(ContentHash, u64)],
    fall_back: bool,
    cancel: &CancellationToken,
) -> Result<Listed, TransferError> {
    let root = t.store.root_prefix();
    let prefix = data_prefix(root);
    let mut walk = Walk::new(root, &prefix, objects);
    let mut listed = Listed::default();
    let mut start_after = walk.start_after(None);
    loop {
        let page = t
            .gate
            .run(cancel, || {
                t.store.list_page(&prefix, start_after.as_deref())
            })
            .await?;
        listed.pages += 1;
        let before = listed.found.len();
        walk.take(&page, &mut listed.found);
        let answered = &listed.found[before..];
        t.progress.add_files(answered.len() as u64);
        t.progress.add_bytes(answered.iter().map(|a| a.1).sum());
        let Some(last) = page.objects.last() else {
            // A truncated page without keys: the store is not listing; ask instead.
            listed.to_ask = walk.rest().to_vec();
            return Ok(listed);
        };
        if walk.rest().is_empty() {
            return Ok(listed);
        }
        // The range's pages so far, not this one alone: pages near the threshold vary.
        if fall_back && (walk.next as u64) < MIN_PER_PAGE as u64 * listed.pages {
            tracing::debug!(
                answered = walk.next,
                pages = listed.pages,
                left = walk.rest().len(),
                "listing pages answered for few objects; asking for the rest one by one"
            );
            listed.to_ask = walk.rest().to_vec();
            return Ok(listed);
        }
        start_after = walk.start_after(Some(&last.key));
    }
}

/// One range of sorted objects, answered for as the listing passes them.
struct Walk<'a> {
    root: &'a str,
    data_prefix: &'a str,
    objects: &'a [(ContentHash, u64)],
    /// `objects[..next]` are answered for.
    next: usize,
    /// The size under the legacy key of `objects[next]`, listed just before it (its current
    /// key sorts after it, maybe on the next page).
    legacy: Option<u64>,
}

impl<'a> Walk<'a> {
    fn new(root: &'a str, data_prefix: &'a str, objects: &'a [(ContentHash, u64)]) -> Self {
        Walk {
            root,
            data_prefix,
            objects,
            next: 0,
            legacy: None,
        }
    }

    fn rest(&self) -> &'a [(ContentHash, u64)] {
        &self.objects[self.next..]
    }

    /// Answers for every object this page covers: those whose keys sort before its last key,
    /// or all of them when it is the listing's last page.
    fn take(&mut self, page: &ListPage, out: &mut Vec<(ContentHash, u64, Found)>) {
        for o in &page.objects {
            let Some((hash, legacy)) = o.key.strip_prefix(self.data_prefix).and_then(content_name)
            else {
                continue;
            };
            while self.rest().first().is_some_and(|n| n.0 < hash) {
                self.answer(None, out);
            }
            if self.rest().first().is_some_and(|n| n.0 == hash) {
                if legacy {
                    self.legacy = Some(o.size);
                } else {
                    self.answer(Some(o.size), out);
                }
            }
        }
        if !page.truncated {
            while !self.rest().is_empty() {
                self.answer(None, out);
            }
        } else if let Some(last) = page.objects.last() {
            // The current key sorts last of an object's two: once the listing is past it, the
            // object was seen in full.
            while self
                .rest()
                .first()
                .is_some_and(|n| data_key(self.root, n.0) <= last.key)
            {
                self.answer(None, out);
            }
        }
    }

    /// Where the next page should start: after the last key listed, or, when no needed object
    /// lies between, just before the next one's keys. `None` (from the start) when neither.
    fn start_after(&self, last_listed: Option<&str>) -> Option<String> {
        let next = self.rest().first()?.0;
        // After every key of the hash before it: `…/Data/{h-1}/` sorts after `{h-1}.xxh128`
        // ('/' follows '.') and before `{h}`.
        let jump = next
            .0
            .checked_sub(1)
            .map(|before| format!("{}{}/", self.data_prefix, ContentHash(before)));
        match (last_listed, jump) {
            (Some(last), Some(jump)) if jump.as_str() > last => Some(jump),
            (Some(last), _) => Some(last.to_string()),
            (None, jump) => jump,
        }
    }

    /// Answers for `objects[next]`: the current key first, as a HEAD asks, then the legacy one.
    fn answer(&mut self, current: Option<u64>, out: &mut Vec<(ContentHash, u64, Found)>) {
        let (hash, size) = self.objects[self.next];
        let found = match (current, self.legacy.take()) {
            (Some(got), _) if got == size => Found::Present,
            (Some(got), _) => Found::WrongSize {
                key: data_key(self.root, hash),
                size: got,
            },
            (None, Some(got)) if got == size => Found::Present,
            (None, Some(got)) => Found::WrongSize {
                key: legacy_data_key(self.root, hash),
                size: got,
            },
            (None, None) => Found::Missing,
        };
        out.push((hash, size, found));
        self.next += 1;
    }
}

/// A content object's name under the data prefix: its hash, and whether it is the legacy
/// name (no `.xxh128`). Only lowercase hex: the only spelling a download asks for.
fn content_name(name: &str) -> Option<(ContentHash, bool)> {
    let (hex, legacy) = match name.strip_suffix(".xxh128") {
        Some(hex) => (hex, false),
        None => (name, true),
    };
    if hex.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    ContentHash::from_hex(hex).map(|h| (h, legacy))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ObjectInfo;

    const ROOT: &str = "DeadlineCloud";
    const PREFIX: &str = "DeadlineCloud/Data/";

    fn h(n: u128) -> ContentHash {
        // Spread over the hash space as real hashes are.
        ContentHash(n << 120 | n)
    }

    fn obj(key: String, size: u64) -> ObjectInfo {
        ObjectInfo {
            key,
            size,
            last_modified_ms: None,
            metadata: Vec::new(),
        }
    }

    fn page(keys: &[(String, u64)], truncated: bool) -> ListPage {
        ListPage {
            objects: keys.iter().map(|(k, s)| obj(k.clone(), *s)).collect(),
            truncated,
        }
    }

    fn summary(out: &[(ContentHash, u64, Found)]) -> Vec<(ContentHash, String)> {
        out.iter()
            .map(|(h, _, f)| {
                let what = match f {
                    Found::Present => "present".to_string(),
                    Found::Missing => "missing".to_string(),
                    Found::WrongSize { key, size } => format!("size {size} at {key}"),
                    Found::Damaged { .. } => "damaged".to_string(),
                };
                (*h, what)
            })
            .collect()
    }

    #[test]
    fn a_listing_answers_as_heads_would_across_pages() {
        let objects = [(h(1), 10), (h(2), 20), (h(3), 30), (h(5), 50), (h(0xc), 40)];
        let mut walk = Walk::new(ROOT, PREFIX, &objects);
        let mut out = Vec::new();
        assert_eq!(
            walk.start_after(None),
            Some(format!("{PREFIX}{}/", ContentHash(h(1).0 - 1)))
        );
        // h(1) present; h(2) under the legacy key only; h(3) legacy key ending the page, its
        // current key (wrong size) on the next; h(0xc) listed only in uppercase, which is
        // not its key; an unrelated key is not content.
        walk.take(
            &page(
                &[
                    (data_key(ROOT, h(1)), 10),
                    (legacy_data_key(ROOT, h(2)), 20),
                    (format!("{PREFIX}notes.txt"), 1),
                    (legacy_data_key(ROOT, h(3)), 30),
                ],
                true,
            ),
            &mut out,
        );
        assert_eq!(
            summary(&out),
            [(h(1), "present".into()), (h(2), "present".into())]
        );
        let last = legacy_data_key(ROOT, h(3));
        assert_eq!(walk.start_after(Some(&last)), Some(last.clone()));
        walk.take(
            &page(
                &[
                    (data_key(ROOT, h(3)), 31),
                    (data_key(ROOT, h(5)), 50),
                    (
                        format!("{PREFIX}{}.xxh128", h(0xc).to_hex().to_uppercase()),
                        40,
                    ),
                ],
                false,
            ),
            &mut out,
        );
        assert_eq!(
            summary(&out[2..]),
            [
                (h(3), format!("size 31 at {}", data_key(ROOT, h(3)))),
                (h(5), "present".into()),
                (h(0xc), "missing".into()),
            ]
        );
        assert!(walk.rest().is_empty());
        assert_eq!(walk.start_after(Some("x")), None);
    }

    #[test]
    fn the_legacy_key_of_the_wrong_size_is_named_and_the_current_one_wins() {
        let objects = [(h(1), 10), (h(2), 20)];
        let mut walk = Walk::new(ROOT, PREFIX, &objects);
        let mut out = Vec::new();
        walk.take(
            &page(
                &[
                    (legacy_data_key(ROOT, h(1)), 9),
                    (legacy_data_key(ROOT, h(2)), 1),
                    (data_key(ROOT, h(2)), 20),
                ],
                false,
            ),
            &mut out,
        );
        assert_eq!(
            summary(&out),
            [
                (h(1), format!("size 9 at {}", legacy_data_key(ROOT, h(1)))),
                (h(2), "present".into()),
            ]
        );
    }

    #[test]
    fn a_page_ending_past_needed_objects_answers_for_them_and_the_next_page_jumps_ahead() {
        let objects = [(h(2), 2), (h(3), 3), (h(9), 9)];
        let mut walk = Walk::new(ROOT, PREFIX, &objects);
        let mut out = Vec::new();
        // The page ends with an object beyond h(3) but before h(9): h(2) and h(3) are not
        // in the store, and the listing continues from just before h(9).
        let last = data_key(ROOT, h(5));
        walk.take(
            &page(&[(data_key(ROOT, h(1)), 1), (last.clone(), 5)], true),
            &mut out,
        );
        assert_eq!(
            summary(&out),
            [(h(2), "missing".into()), (h(3), "missing".into())]
        );
        let next = walk.start_after(Some(&last)).unwrap();
        assert_eq!(next, format!("{PREFIX}{}/", ContentHash(h(9).0 - 1)));
        assert!(next.as_str() > data_key(ROOT, ContentHash(h(9).0 - 1)).as_str());
        assert!(next.as_str() < legacy_data_key(ROOT, h(9)).as_str());
        // A page ending on a key short of the next object leaves it for the next page.
        let short = data_key(ROOT, ContentHash(h(9).0 - 1));
        walk.take(&page(&[(short.clone(), 1)], true), &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(walk.start_after(Some(&short)), Some(next));
    }

    #[test]
    fn the_first_object_at_the_start_of_the_hash_space_lists_from_the_prefix() {
        let objects = [(ContentHash(0), 1)];
        let walk = Walk::new(ROOT, PREFIX, &objects);
        assert_eq!(walk.start_after(None), None);
    }

    #[test]
    fn content_names_are_the_hash_with_or_without_the_extension() {
        let hex = h(0xab).to_hex();
        assert_eq!(
            content_name(&format!("{hex}.xxh128")),
            Some((h(0xab), false))
        );
        assert_eq!(content_name(&hex), Some((h(0xab), true)));
        assert_eq!(content_name(&format!("{hex}.md5")), None);
        assert_eq!(content_name(&hex.to_uppercase()), None);
        assert_eq!(content_name("abc"), None);
    }
}
