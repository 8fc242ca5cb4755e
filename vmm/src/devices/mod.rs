//! Devices the guest reaches through port I/O and MMIO exits: the buses that
//! route exits by address, the legacy PC devices, and virtio-mmio.

pub mod bus;
pub mod legacy;
pub mod virtio;
