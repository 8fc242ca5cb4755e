# (b) PVH guest: the XEN_ELFNOTE_PHYS32_ENTRY note points at a 32-bit entry
# (protected mode, paging off, %ebx -> hvm_start_info). The ELF entry point is
# a trap, so a VMM that ignores the note prints "wrong entry" and fails.
    .section .note.Xen, "a", @note
    .balign 4
    .long 4                 # namesz
    .long 4                 # descsz
    .long 18                # XEN_ELFNOTE_PHYS32_ENTRY
    .asciz "Xen"
    .long pvh_start

    .section .text.entry, "ax"
    .code32
    .globl pvh_start
pvh_start:
    mov $stack_top, %esp
    mov %ebx, %edi
    mov $s_hello, %esi
    call puts32
    cmpl $0x336ec578, (%edi)    # XEN_HVM_START_MAGIC_VALUE
    je 1f
    mov $s_badmagic, %esi
    call puts32
1:  mov $s_mods, %esi
    call puts32
    mov 12(%edi), %eax          # nr_modules
    add $'0', %al
    mov $0x3f8, %dx
    out %al, %dx
    mov $s_memmap, %esi
    call puts32
    mov 48(%edi), %eax          # memmap_entries
    add $'0', %al
    out %al, %dx
    mov $s_cmdline, %esi
    call puts32
    mov 24(%edi), %esi          # cmdline_paddr (low half)
    call puts32
    mov $'\n', %al
    out %al, %dx
    movb $123, 0xC0000000       # boot timer (paging is off: physical)
    mov $s_bye, %esi
    call puts32
    mov $0xfe, %al
    out %al, $0x64              # i8042 reset
    xor %eax, %eax
    out %eax, $0xf4             # no i8042 (QEMU microvm): isa-debug-exit
    lidt null_idt32             # last resort: triple fault
    int3
2:  hlt
    jmp 2b

puts32:
    mov $0x3f8, %dx
1:  lodsb
    test %al, %al
    jz 2f
    out %al, %dx
    jmp 1b
2:  ret

    .code64
    .globl _start
_start:
    lea s_wrong(%rip), %rsi
    mov $0x3f8, %dx
1:  lodsb
    test %al, %al
    jz 2f
    out %al, %dx
    jmp 1b
2:  lidt null_idt32(%rip)
    int3

s_hello:    .asciz "vmpod-guest: pvh ok"
s_badmagic: .asciz " BAD-MAGIC"
s_mods:     .asciz " modules="
s_memmap:   .asciz " memmap="
s_cmdline:  .asciz " cmdline="
s_bye:      .asciz "vmpod-guest: reset\n"
s_wrong:    .asciz "vmpod-guest: wrong entry (64-bit ELF entry used instead of PVH)\n"
    .balign 8
null_idt32: .word 0
            .quad 0

    .section .bss
    .balign 16
    .skip 4096
stack_top:
