//! The store's own id: a random 30-bit number drawn when a store file is created and kept in its
//! `meta` table under `store_id`, shown as six lowercase base32 characters (`a`–`z`, `2`–`7`).
//!
//! It tells stores apart wherever the daemon names things outside the file (branches, work and
//! run directories on hosts), so that two stores never take each other's work for their own. A
//! store created before this id existed has none, and keeps the names it always had.

use std::fmt;

/// Key of the store id in the `meta` table.
pub(crate) const META_STORE_ID: &str = "store_id";

/// Bits of a store id: six base32 characters.
const BITS: u32 = 30;
const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// A store's id (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StoreId(u32);

impl StoreId {
    /// A new random id, for a store being created.
    pub(crate) fn random() -> Self {
        StoreId(rand::random::<u32>() & ((1 << BITS) - 1))
    }

    /// The id as kept in `meta`; `None` for a value no build ever wrote.
    pub(crate) fn from_meta(value: u64) -> Option<Self> {
        u32::try_from(value)
            .ok()
            .filter(|v| *v < 1 << BITS)
            .map(StoreId)
    }

    pub(crate) fn to_meta(self) -> u64 {
        u64::from(self.0)
    }
}

impl fmt::Display for StoreId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for i in (0..BITS / 5).rev() {
            let digit = (self.0 >> (i * 5)) & 31;
            // `digit` < 32 = ALPHABET.len().
            write!(f, "{}", char::from(ALPHABET[digit as usize]))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_id_shows_as_six_lowercase_base32_characters() {
        assert_eq!(StoreId(0).to_string(), "aaaaaa");
        assert_eq!(StoreId((1 << 30) - 1).to_string(), "777777");
        assert_eq!(StoreId(1).to_string(), "aaaaab");
        let shown = StoreId::random().to_string();
        assert_eq!(shown.len(), 6);
        assert!(shown.bytes().all(|b| ALPHABET.contains(&b)), "{shown}");
    }

    #[test]
    fn only_thirty_bit_values_are_store_ids() {
        let id = StoreId::random();
        assert_eq!(StoreId::from_meta(id.to_meta()), Some(id));
        assert_eq!(StoreId::from_meta(1 << 30), None);
        assert_eq!(StoreId::from_meta(u64::MAX), None);
    }
}
