//! Port I/O and MMIO buses: a sorted list of non-overlapping ranges, each
//! owned by one device behind its own lock, looked up by binary search on
//! every exit. A device sees offsets relative to its base and never an
//! access that straddles its end.

use std::sync::{Arc, Mutex};

use anyhow::{Result, bail};

/// What a device on a bus implements. `data.len()` is the access size.
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

struct Range {
    base: u64,
    len: u64,
    device: SharedDevice,
}

#[derive(Default)]
pub struct Bus {
    ranges: Vec<Range>,
}

impl Bus {
    /// Adds `device` at `[base, base+len)`; overlapping ranges are a VMM bug
    /// and rejected with both ranges named.
    pub fn insert(&mut self, base: u64, len: u64, device: SharedDevice) -> Result<()> {
        let Some(end) = base.checked_add(len).filter(|_| len > 0) else {
            bail!("bus range {base:#x}+{len:#x} is empty or wraps");
        };
        let at = self.ranges.partition_point(|r| r.base < base);
        if let Some(prev) = at.checked_sub(1).and_then(|i| self.ranges.get(i))
            && prev.base + prev.len > base
        {
            bail!(
                "bus range {base:#x}..{end:#x} overlaps {:#x}..{:#x}",
                prev.base,
                prev.base + prev.len
            );
        }
        if let Some(next) = self.ranges.get(at)
            && next.base < end
        {
            bail!(
                "bus range {base:#x}..{end:#x} overlaps {:#x}..{:#x}",
                next.base,
                next.base + next.len
            );
        }
        self.ranges.insert(at, Range { base, len, device });
        Ok(())
    }

    fn find(&self, addr: u64, size: usize) -> Option<(&Range, u64)> {
        let i = self
            .ranges
            .partition_point(|r| r.base <= addr)
            .checked_sub(1)?;
        let r = &self.ranges[i];
        let offset = addr - r.base;
        (offset.checked_add(size as u64)? <= r.len).then_some((r, offset))
    }

    /// False when no device claims the access; the caller decides what an
    /// unclaimed read returns.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((r, offset)) => {
                r.device
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .read(offset, data);
                true
            }
            None => {
                tracing::trace!("unclaimed {}-byte read at {addr:#x}", data.len());
                false
            }
        }
    }

    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((r, offset)) => {
                r.device
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .write(offset, data);
                true
            }
            None => {
                tracing::trace!("unclaimed {}-byte write at {addr:#x}", data.len());
                false
            }
        }
    }
}

/// The two buses a vCPU dispatches to.
#[derive(Default)]
pub struct Buses {
    pub pio: Bus,
    pub mmio: Bus,
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(Vec<(u64, Vec<u8>)>);
    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatch_by_range_and_reject_overlap() {
        let dev = Arc::new(Mutex::new(Echo(Vec::new())));
        let mut bus = Bus::default();
        bus.insert(0x100, 0x10, dev.clone()).expect("insert");
        bus.insert(0x200, 0x10, dev.clone()).expect("insert");
        assert!(bus.insert(0x10f, 2, dev.clone()).is_err());
        assert!(bus.insert(0xf0, 0x11, dev.clone()).is_err());
        assert!(bus.insert(0x1ff, 0, dev.clone()).is_err());
        let mut b = [0u8; 2];
        assert!(bus.read(0x105, &mut b));
        assert_eq!(b, [5, 5]);
        assert!(!bus.read(0x10f, &mut b), "straddles the end");
        assert!(!bus.read(0x150, &mut b));
        assert!(bus.write(0x201, &[9]));
        assert_eq!(dev.lock().expect("lock").0, vec![(1, vec![9])]);
    }
}
