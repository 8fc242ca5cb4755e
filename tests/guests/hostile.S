# (e) Hostile guest: garbage into every register of the virtio-mmio device at
# 0xC0001000 (all access sizes), a driver handshake with an impossible queue,
# garbage into the serial port, the boot-timer page, unmapped MMIO and stray
# ports; then it checks the device reports NEEDS_RESET, repairs the serial
# port, says it survived and resets cleanly through the i8042.
    .code64
    .section .text.entry, "ax"
    .globl _start
_start:
    mov %rsi, %r15
    lea stack_top(%rip), %rsp
    lea s_start(%rip), %rsi
    call puts64

    mov $0xC0001000, %ebx       # virtio-mmio device 0
    # 1. every offset of the register file and beyond, every size
    xor %ecx, %ecx
1:  movb $0xa5, (%rbx,%rcx)
    movb (%rbx,%rcx), %al
    movw $0x5aa5, (%rbx,%rcx)
    inc %ecx
    cmp $0x140, %ecx
    jb 1b
    xor %ecx, %ecx
2:  movl $0xdeadbeef, (%rbx,%rcx)
    movl (%rbx,%rcx), %eax
    mov $-1, %rax
    mov %rax, (%rbx,%rcx)
    mov (%rbx,%rcx), %rax
    add $4, %ecx
    cmp $0x1000, %ecx
    jb 2b

    # 2. a handshake with an impossible queue: size 3, rings outside RAM
    movl $0, 0x70(%rbx)         # reset
    movl $1, 0x70(%rbx)         # ACKNOWLEDGE
    movl $3, 0x70(%rbx)         # DRIVER
    movl $1, 0x24(%rbx)         # DriverFeaturesSel = 1
    movl $1, 0x20(%rbx)         # VIRTIO_F_VERSION_1
    movl $0xb, 0x70(%rbx)       # FEATURES_OK
    movl $99, 0x30(%rbx)        # QueueSel beyond the device's queues
    movl $8, 0x38(%rbx)
    movl $1, 0x44(%rbx)
    movl $0, 0x30(%rbx)         # QueueSel 0
    movl $3, 0x38(%rbx)         # QueueNum: not a power of two
    movl $0xfffff000, 0x80(%rbx)
    movl $0xffff, 0x84(%rbx)    # descriptor table far outside guest RAM
    movl $0xfffff000, 0x90(%rbx)
    movl $0xffff, 0x94(%rbx)
    movl $0xfffff000, 0xa0(%rbx)
    movl $0xffff, 0xa4(%rbx)
    movl $1, 0x44(%rbx)         # QueueReady
    movl $0xf, 0x70(%rbx)       # DRIVER_OK
    movl $0x12345678, 0x50(%rbx)    # QueueNotify for a queue that is not there
    movl 0x70(%rbx), %eax
    test $0x40, %eax            # DEVICE_NEEDS_RESET
    jz 3f
    lea s_nr_ok(%rip), %rsi
    jmp 4f
3:  lea s_nr_missing(%rip), %rsi
4:  call puts64
    movl $0, 0x70(%rbx)         # reset again, then more garbage
    movl $0xffffffff, 0x70(%rbx)
    movl $0, 0x70(%rbx)

    # 3. unmapped MMIO, the rest of the device window, stray ports
    mov $0xD0000000, %eax
    movl $0x1, (%rax)
    movl (%rax), %edx
    mov $0xC0008000, %eax
    movl $0x1, (%rax)
    movl (%rax), %edx
    mov $0x1234, %dx
    out %al, %dx
    in %dx, %al
    out %eax, %dx
    in %dx, %eax
    mov $0x60, %dx
    mov $0xaa, %al
    out %al, %dx                # i8042 data port: garbage
    in $0x64, %al

    # 4. boot-timer page: every size, never the value 123 at offset 0
    mov $0xC0000000, %ebx
    xor %ecx, %ecx
5:  movb $0x7c, (%rbx,%rcx)
    movw $0xffff, (%rbx,%rcx)
    movl $0xffffffff, (%rbx,%rcx)
    mov $-1, %rax
    mov %rax, (%rbx,%rcx)
    mov (%rbx,%rcx), %rax
    add $0x100, %ecx
    cmp $0x1000, %ecx
    jb 5b

    # 5. serial port: garbage into every register, then repair it
    mov $0x3f9, %dx
6:  mov $0xff, %al
    out %al, %dx
    in %dx, %al
    inc %dx
    cmp $0x400, %dx
    jb 6b
    mov $0x3f8, %dx
    mov $0xff, %al
    out %al, %dx
    in %dx, %al
    mov $0x3fb, %dx             # LCR: 8N1, DLAB off
    mov $0x03, %al
    out %al, %dx
    mov $0x3fc, %dx             # MCR: loopback off
    xor %al, %al
    out %al, %dx
    mov $0x3f9, %dx             # IER: no interrupts
    out %al, %dx
    lea s_survived(%rip), %rsi
    call puts64
    jmp finish64

    .include "lib64.inc"
s_start:      .asciz "vmpod-guest: hostile start\n"
s_nr_ok:      .asciz "vmpod-guest: needs-reset ok\n"
s_nr_missing: .asciz "vmpod-guest: needs-reset MISSING\n"
s_survived:   .asciz "vmpod-guest: hostile survived\n"

    .section .bss
    .balign 16
    .skip 4096
stack_top:
