//! The execution context: a journaled write overlay over a [`StateView`], so a failed
//! transaction rolls back to its checkpoint and a block's writes come out as one ordered
//! [`WriteSet`].

use borsh::{BorshDeserialize, BorshSerialize};
use cairn_types::{ErrorCode, Event, Hash32};

use crate::keys;
use crate::model::{Due, Totals};
use crate::store::{StateView, StoreError, WriteSet};
use crate::{Error, Params};

/// Why executing something stopped: a typed error the transaction's receipt carries, or a
/// fatal error (a corrupt store or a broken invariant) that stops the block.
#[derive(Debug)]
pub(crate) enum Fail {
    Code(ErrorCode),
    Fatal(Error),
}

impl From<ErrorCode> for Fail {
    fn from(c: ErrorCode) -> Self {
        Fail::Code(c)
    }
}

impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        Fail::Fatal(e)
    }
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Self {
        Fail::Fatal(Error::Store(e))
    }
}

pub(crate) type Exec<T> = Result<T, Fail>;

/// A broken invariant: a bug, never the result of transaction content.
pub(crate) fn invariant(what: &str) -> Fail {
    Fail::Fatal(Error::Invariant(what.to_owned()))
}

#[derive(Clone, Copy)]
pub(crate) struct Checkpoint {
    journal: usize,
    events: usize,
}

/// A journal entry: a key and what the overlay held for it before (`None`: nothing staged).
type JournalEntry = (Vec<u8>, Option<Option<Vec<u8>>>);

pub(crate) struct Ctx<'a> {
    base: &'a dyn StateView,
    writes: WriteSet,
    journal: Vec<JournalEntry>,
    events: Vec<Event>,
    pub(crate) height: u64,
    pub(crate) beacon: Hash32,
    pub(crate) params: Params,
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(base: &'a dyn StateView, height: u64, beacon: Hash32, params: Params) -> Self {
        Ctx { base, writes: WriteSet::new(), journal: Vec::new(), events: Vec::new(), height, beacon, params }
    }

    pub(crate) fn get_raw(&self, key: &[u8]) -> Exec<Option<Vec<u8>>> {
        match self.writes.get(key) {
            Some(staged) => Ok(staged.clone()),
            None => Ok(self.base.get(key)?),
        }
    }

    fn stage(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) {
        let prev = self.writes.insert(key.clone(), value);
        self.journal.push((key, prev));
    }

    pub(crate) fn get<T: BorshDeserialize>(&self, key: &[u8]) -> Exec<Option<T>> {
        match self.get_raw(key)? {
            None => Ok(None),
            Some(bytes) => borsh::from_slice(&bytes).map(Some).map_err(|e| {
                Fail::Fatal(Error::Store(StoreError::Corrupt { key: hex_key(key), reason: e.to_string() }))
            }),
        }
    }

    pub(crate) fn get_or_default<T: BorshDeserialize + Default>(&self, key: &[u8]) -> Exec<T> {
        Ok(self.get(key)?.unwrap_or_default())
    }

    pub(crate) fn put<T: BorshSerialize>(&mut self, key: Vec<u8>, value: &T) -> Exec<()> {
        let bytes = borsh::to_vec(value).map_err(|e| invariant(&format!("encode: {e}")))?;
        self.stage(key, Some(bytes));
        Ok(())
    }

    pub(crate) fn delete(&mut self, key: Vec<u8>) {
        self.stage(key, None);
    }

    pub(crate) fn emit(&mut self, ev: Event) {
        self.events.push(ev);
    }

    pub(crate) fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    pub(crate) fn checkpoint(&self) -> Checkpoint {
        Checkpoint { journal: self.journal.len(), events: self.events.len() }
    }

    pub(crate) fn rollback(&mut self, cp: Checkpoint) {
        while self.journal.len() > cp.journal {
            if let Some((key, prev)) = self.journal.pop() {
                match prev {
                    Some(v) => {
                        self.writes.insert(key, v);
                    }
                    None => {
                        self.writes.remove(&key);
                    }
                }
            }
        }
        self.events.truncate(cp.events);
    }

    /// Forget the journal: everything so far is final for this block.
    pub(crate) fn settle_journal(&mut self) {
        self.journal.clear();
    }

    pub(crate) fn into_writes(self) -> WriteSet {
        self.writes
    }

    pub(crate) fn totals(&self) -> Exec<Totals> {
        self.get_or_default(keys::TOTALS)
    }

    pub(crate) fn set_totals(&mut self, t: &Totals) -> Exec<()> {
        self.put(keys::TOTALS.to_vec(), t)
    }

    /// Schedule `item` for the end of block `height` (which must be in the future).
    pub(crate) fn schedule(&mut self, height: u64, item: Due) -> Exec<()> {
        if height <= self.height {
            return Err(invariant("scheduling work in the past"));
        }
        let count_key = keys::due_count(height);
        let n: u32 = self.get_or_default(&count_key)?;
        self.put(keys::due(height, n), &item)?;
        let next = n.checked_add(1).ok_or_else(|| invariant("due counter overflow"))?;
        self.put(count_key, &next)
    }

    /// Take the work scheduled for this block, removing it from state.
    pub(crate) fn take_due(&mut self) -> Exec<Vec<Due>> {
        let count_key = keys::due_count(self.height);
        let n: u32 = self.get_or_default(&count_key)?;
        let mut items = Vec::with_capacity(n as usize);
        for seq in 0..n {
            let key = keys::due(self.height, seq);
            let item: Due = self.get(&key)?.ok_or_else(|| invariant("scheduled item missing"))?;
            items.push(item);
            self.delete(key);
        }
        if n > 0 {
            self.delete(count_key);
        }
        Ok(items)
    }
}

fn hex_key(key: &[u8]) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{AuthenticatedKv, MemStore};
    use cairn_types::{Address, Amount};

    #[test]
    fn rollback_restores_staged_values_deletions_and_events() {
        let mut base = MemStore::new();
        base.put(b"k1".to_vec(), b"base".to_vec()).unwrap();
        base.commit().unwrap();
        let mut ctx = Ctx::new(&base, 1, Hash32::ZERO, Params::default());
        ctx.put(b"k2".to_vec(), &7u32).unwrap();
        ctx.settle_journal();
        let ev = Event::Bonded { who: Address::default(), amount: Amount::ZERO };
        let cp = ctx.checkpoint();
        ctx.put(b"k2".to_vec(), &8u32).unwrap();
        ctx.delete(b"k1".to_vec());
        ctx.put(b"k3".to_vec(), &9u32).unwrap();
        ctx.emit(ev.clone());
        assert_eq!(ctx.get::<u32>(b"k2").unwrap(), Some(8));
        assert_eq!(ctx.get_raw(b"k1").unwrap(), None);
        ctx.rollback(cp);
        assert_eq!(ctx.get::<u32>(b"k2").unwrap(), Some(7));
        assert_eq!(ctx.get_raw(b"k1").unwrap(), Some(b"base".to_vec()));
        assert_eq!(ctx.get_raw(b"k3").unwrap(), None);
        assert!(ctx.take_events().is_empty());
        let writes = ctx.into_writes();
        assert_eq!(writes.len(), 1, "only the settled write remains: {writes:?}");
    }
}
