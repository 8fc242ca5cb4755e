# (a) ELF vmlinux-style guest, entered in 64-bit mode with %rsi -> zero page,
# the way a VMM starts an uncompressed Linux kernel.
    .code64
    .section .text.entry, "ax"
    .globl _start
_start:
    mov %rsi, %rbx
    lea stack_top(%rip), %rsp
    lea s_hello(%rip), %rsi
    call puts64
    call zero_page64
    jmp finish64

    .include "lib64.inc"
s_hello: .asciz "vmpod-guest: elf64 ok"

    .section .bss
    .balign 16
    .skip 4096
stack_top:
