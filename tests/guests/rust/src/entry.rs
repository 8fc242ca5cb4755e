//! `_start`: the VMM enters here in 64-bit mode on its own boot stack. It
//! moves to a stack in .bss, sets CR0/CR4 for SSE as any x86-64 code
//! expects (the VMM sets only CR4.PAE; compiled guest code does without SSE
//! all the same, see .cargo/config.toml), and calls the guest's `main`
//! through [`crate::entry!`].
//!
//! Guest RAM is fresh memfd pages, so .bss is already zero; nothing clears
//! it (that would touch every page of the heap arena).

/// The guest's stack.
pub const STACK_SIZE: usize = 256 * 1024;

core::arch::global_asm!(
    r#"
    .section .text.entry, "ax"
    .globl _start
_start:
    cli
    cld
    lea rsp, [rip + vmpod_guest_stack_top]
    xor ebp, ebp
    mov rax, cr0
    and rax, ~0x4           /* EM off: no x87 emulation trap */
    or rax, 0x2             /* MP on */
    mov cr0, rax
    mov rax, cr4
    or rax, 0x600           /* OSFXSR | OSXMMEXCPT */
    mov cr4, rax
    mov rdi, rsi            /* the zero page, as the first argument */
    call {start}
    ud2

    .section .bss.vmpod_guest_stack, "aw", @nobits
    .balign 16
    .skip {stack_size}
vmpod_guest_stack_top:
"#,
    start = sym start,
    stack_size = const STACK_SIZE,
);

unsafe extern "Rust" {
    /// Defined by [`crate::entry!`] in the guest binary.
    fn vmpod_guest_main();
}

extern "C" fn start(_zero_page: u64) -> ! {
    crate::logger::init();
    // SAFETY: the binary defines it with `entry!`, which takes a `fn()`.
    unsafe { vmpod_guest_main() };
    crate::exit()
}

/// `vmpod_guest::entry!(main);` in a guest binary: `main` (a `fn()`) runs
/// once the guest is set up; when it returns the guest [`crate::exit`]s.
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        #[unsafe(export_name = "vmpod_guest_main")]
        pub fn __vmpod_guest_main() {
            let main: fn() = $main;
            main();
        }
    };
}
