# (d) 2-vCPU guest. The VMM starts only the BSP (like a PC: the in-kernel
# LAPIC keeps the other vCPUs in wait-for-SIPI); the guest finds the CPUs in
# the MP table and wakes the AP itself with INIT-SIPI-SIPI, exactly as Linux
# does without ACPI. The AP runs a real-mode trampoline copied to 0x3000.
    .code64
    .section .text.entry, "ax"
    .globl _start
_start:
    mov %rsi, %rbx
    lea stack_top(%rip), %rsp
    lea s_cpu0(%rip), %rsi
    call puts64
    # The MP floating pointer sits at the EBDA (0x9fc00).
    mov $0x9fc00, %eax
    cmpl $0x5f504d5f, (%rax)    # "_MP_"
    jne no_mp
    mov 4(%rax), %edi           # -> "PCMP" configuration table
    cmpl $0x504d4350, (%rdi)    # "PCMP"
    jne no_mp
    movzwl 34(%rdi), %ecx       # entry count
    lea 44(%rdi), %rsi          # first entry
    xor %r8d, %r8d              # processors found
1:  test %ecx, %ecx
    jz 3f
    cmpb $0, (%rsi)             # type 0: processor, 20 bytes
    jne 2f
    inc %r8d
    add $20, %rsi
    dec %ecx
    jmp 1b
2:  add $8, %rsi                # every other entry type is 8 bytes
    dec %ecx
    jmp 1b
3:  lea s_mp(%rip), %rsi
    call puts64
    mov %r8d, %eax
    add $'0', %al
    call putc64
    mov $'\n', %al
    call putc64

    # Copy the trampoline below 1 MiB, page-aligned (SIPI vector 0x03).
    lea tramp_start(%rip), %rsi
    mov $0x3000, %edi
    mov $(tramp_end - tramp_start), %ecx
    rep movsb
    mov $0xFEE00000, %eax       # LAPIC
    movl $0, 0x310(%rax)        # ICR high: no destination (shorthand used)
    movl $0x000C4500, 0x300(%rax)   # INIT, assert, all excluding self
    call delay
    movl $0x000C4603, 0x300(%rax)   # SIPI, vector 0x03 -> 0x3000
    call delay
    movl $0x000C4603, 0x300(%rax)   # second SIPI, as the MP spec says
    mov $0x5000, %edi           # the AP sets this byte once it printed
    mov $200000000, %rcx
4:  cmpb $1, (%rdi)
    je 5f
    pause
    dec %rcx
    jnz 4b
    lea s_timeout(%rip), %rsi
    call puts64
    jmp finish64
5:  lea s_ok(%rip), %rsi
    call puts64
    jmp finish64

no_mp:
    lea s_nomp(%rip), %rsi
    call puts64
    jmp finish64

delay:
    mov $100000, %ecx
1:  pause
    loop 1b
    ret

    .code16
tramp_start:
    cli
    mov %cs, %ax
    mov %ax, %ds
    mov $(t_msg - tramp_start), %si
    mov $0x3f8, %dx
1:  lodsb
    test %al, %al
    jz 2f
    out %al, %dx
    jmp 1b
2:  xor %ax, %ax
    mov %ax, %ds
    movb $1, 0x5000
3:  hlt
    jmp 3b
t_msg: .asciz "vmpod-guest: cpu1 up\n"
tramp_end:
    .code64

    .include "lib64.inc"
s_cpu0:    .asciz "vmpod-guest: cpu0 up\n"
s_mp:      .asciz "vmpod-guest: mptable cpus="
s_nomp:    .asciz "vmpod-guest: no MP table\n"
s_timeout: .asciz "vmpod-guest: cpu1 timeout\n"
s_ok:      .asciz "vmpod-guest: smp ok\n"

    .section .bss
    .balign 16
    .skip 4096
stack_top:
