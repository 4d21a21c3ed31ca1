//! The graph's storage: growable without pauses and without copies.
//!
//! A graph of millions of nodes and edges kept in `Vec`s and `HashMap`s
//! stalls ingest whenever one of them doubles: every element is moved (or
//! rehashed) in one go under the attribute stage's lock, and the old and new
//! allocations briefly coexist. Here:
//!
//! - [`Chunked`] stores elements in fixed-size chunks that never move;
//! - [`Names`] packs strings into chunks and hands out 12-byte [`Name`]s;
//! - [`Index`] finds an element by hash in one of [`SHARDS`] small tables,
//!   so a table that grows rehashes 1/64th of the entries, from the hashes
//!   stored beside them, touching no element.

use hashbrown::HashTable;

/// Elements per chunk of [`Chunked`].
const CHUNK: usize = 1 << 14;

/// Elements in fixed-size chunks: an index stays valid and an element never
/// moves, so pushing costs no copy of what is already there.
#[derive(Debug)]
pub(crate) struct Chunked<T> {
    chunks: Vec<Vec<T>>,
    len: usize,
}

impl<T> Default for Chunked<T> {
    fn default() -> Self {
        Chunked {
            chunks: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Chunked<T> {
    /// Appends `value` and returns its index, or `None` past `u32::MAX`
    /// elements.
    pub(crate) fn push(&mut self, value: T) -> Option<u32> {
        let index = u32::try_from(self.len).ok().filter(|&i| i != NONE)?;
        match self.chunks.last_mut() {
            Some(chunk) if chunk.len() < CHUNK => chunk.push(value),
            _ => {
                let mut chunk = Vec::with_capacity(CHUNK);
                chunk.push(value);
                self.chunks.push(chunk);
            }
        }
        self.len += 1;
        Some(index)
    }

    pub(crate) fn get(&self, index: u32) -> Option<&T> {
        let index = index as usize;
        self.chunks.get(index / CHUNK)?.get(index % CHUNK)
    }

    pub(crate) fn get_mut(&mut self, index: u32) -> Option<&mut T> {
        let index = index as usize;
        self.chunks.get_mut(index / CHUNK)?.get_mut(index % CHUNK)
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Every element with its index, in insertion order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u32, &T)> {
        self.chunks
            .iter()
            .flatten()
            .zip(0u32..)
            .map(|(value, index)| (index, value))
    }
}

/// The index meaning "none" in links between elements.
pub(crate) const NONE: u32 = u32::MAX;

/// Bytes per chunk of [`Names`].
const NAME_CHUNK: usize = 1 << 20;

/// A string held by [`Names`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Name {
    chunk: u32,
    start: u32,
    len: u32,
}

/// Strings packed into chunks that never move. A string longer than a chunk
/// gets a chunk of its own.
#[derive(Debug, Default)]
pub(crate) struct Names {
    chunks: Vec<String>,
}

impl Names {
    /// Keeps a copy of `text`.
    pub(crate) fn add(&mut self, text: &str) -> Name {
        let fits = self
            .chunks
            .last()
            .is_some_and(|chunk| chunk.capacity() - chunk.len() >= text.len());
        if !fits {
            self.chunks
                .push(String::with_capacity(NAME_CHUNK.max(text.len())));
        }
        let chunk = self.chunks.len().saturating_sub(1);
        let Some(last) = self.chunks.last_mut() else {
            return Name::EMPTY;
        };
        let start = last.len();
        last.push_str(text);
        match (
            u32::try_from(chunk),
            u32::try_from(start),
            u32::try_from(text.len()),
        ) {
            (Ok(chunk), Ok(start), Ok(len)) => Name { chunk, start, len },
            // Four billion chunks, or a name of 4 GiB: not reachable before
            // memory runs out.
            _ => Name::EMPTY,
        }
    }

    pub(crate) fn get(&self, name: Name) -> &str {
        let start = name.start as usize;
        self.chunks
            .get(name.chunk as usize)
            .and_then(|chunk| chunk.get(start..start + name.len as usize))
            .unwrap_or_default()
    }

    /// Bytes reserved for names.
    pub(crate) fn capacity(&self) -> usize {
        self.chunks.iter().map(String::capacity).sum()
    }
}

impl Name {
    const EMPTY: Name = Name {
        chunk: 0,
        start: 0,
        len: 0,
    };
}

/// Tables an [`Index`] spreads its entries over.
pub(crate) const SHARDS: usize = 64;

/// Finds elements of a [`Chunked`] by a 64-bit hash of their key. Each entry
/// keeps 32 bits of its hash, so growing a table never reads an element.
#[derive(Debug)]
pub(crate) struct Index {
    shards: Vec<HashTable<(u32, u32)>>,
}

impl Default for Index {
    fn default() -> Self {
        Index {
            shards: (0..SHARDS).map(|_| HashTable::new()).collect(),
        }
    }
}

impl Index {
    /// The element with hash `hash` for which `is` holds.
    pub(crate) fn find(&self, hash: u64, mut is: impl FnMut(u32) -> bool) -> Option<u32> {
        let (shard, low) = split(hash);
        self.shards
            .get(shard)?
            .find(spread(low), |&(element, kept)| kept == low && is(element))
            .map(|&(element, _)| element)
    }

    /// Adds `element` under `hash`.
    pub(crate) fn insert(&mut self, hash: u64, element: u32) {
        let (shard, low) = split(hash);
        if let Some(table) = self.shards.get_mut(shard) {
            table.insert_unique(spread(low), (element, low), |&(_, kept)| spread(kept));
        }
    }

    /// Bytes reserved for the tables.
    pub(crate) fn capacity(&self) -> usize {
        // Each bucket holds an entry and a control byte.
        let entry = std::mem::size_of::<(u32, u32)>() + 1;
        self.shards.iter().map(|t| t.capacity() * entry).sum()
    }
}

/// The shard of a hash (its top bits) and the 32 bits kept.
fn split(hash: u64) -> (usize, u32) {
    let shard = (hash >> (64 - SHARDS.trailing_zeros())) as usize;
    (shard, hash as u32)
}

/// The table hash of the 32 bits kept: spread over 64 bits, as the table
/// takes its control bits from the top.
fn spread(low: u32) -> u64 {
    u64::from(low).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_elements_keep_their_index_across_chunks() {
        let mut values = Chunked::default();
        for i in 0..(CHUNK as u32 * 2 + 3) {
            assert_eq!(values.push(i * 7), Some(i));
        }
        assert_eq!(values.len(), CHUNK * 2 + 3);
        assert_eq!(
            values.get(CHUNK as u32 + 1),
            Some(&((CHUNK as u32 + 1) * 7))
        );
        *values.get_mut(5).unwrap() = 1;
        assert_eq!(values.get(5), Some(&1));
        assert_eq!(values.get(CHUNK as u32 * 2 + 3), None);
        assert!(values.iter().all(|(i, v)| i == 5 || *v == i * 7));
    }

    #[test]
    fn names_hold_any_text_including_text_longer_than_a_chunk() {
        let mut names = Names::default();
        let long = "x".repeat(NAME_CHUNK + 10);
        let a = names.add("arn:aws:s3:::payroll/q3.csv");
        let b = names.add(&long);
        let c = names.add("");
        let d = names.add("héllo");
        assert_eq!(names.get(a), "arn:aws:s3:::payroll/q3.csv");
        assert_eq!(names.get(b), long);
        assert_eq!(names.get(c), "");
        assert_eq!(names.get(d), "héllo");
    }

    #[test]
    fn the_index_finds_every_element_including_those_sharing_a_hash() {
        let mut index = Index::default();
        for element in 0..100_000u32 {
            // Pairs of elements share each hash.
            let hash = u64::from(element / 2).wrapping_mul(0xA076_1D64_78BD_642F);
            index.insert(hash, element);
        }
        for element in 0..100_000u32 {
            let hash = u64::from(element / 2).wrapping_mul(0xA076_1D64_78BD_642F);
            assert_eq!(index.find(hash, |e| e == element), Some(element));
        }
        assert_eq!(index.find(12345, |_| true), None);
    }
}
