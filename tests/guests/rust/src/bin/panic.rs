//! A guest that panics: the host must see the message and a failed guest,
//! never a clean reset.

#![no_std]
#![no_main]

vmpod_guest::entry!(main);

fn main() {
    let answer: Option<u32> = core::hint::black_box(None);
    vmpod_guest::println!("vmpod-guest: about to panic");
    if answer.is_none() {
        panic!("on purpose, value {}", 42);
    }
}
