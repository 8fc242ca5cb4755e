/* (f) virtio-blk guest: a minimal virtio-mmio v2 driver for the device at
 * 0xC0001000 (reset, ACKNOWLEDGE, DRIVER, features, FEATURES_OK, queue 0
 * with its rings in guest RAM, DRIVER_OK), polling the used ring (interrupts
 * stay off). It reads sector 0 and prints its first 16 bytes, writes the
 * pattern byte i = (i ^ 0x5a) to sector 1, flushes, and resets through the
 * i8042.
 *
 * Built a second time with -DHOSTILE (blk_hostile.elf): after the read of
 * sector 0 it posts a data buffer outside guest RAM and a sector beyond the
 * disk (each must come back IOERR), then a chain whose descriptor points at
 * itself (the device must set DEVICE_NEEDS_RESET); then it resets the device
 * and the VM.
 */
    .code64
    .section .text.entry, "ax"
    .globl _start

#define MMIO    0xC0001000
#define DESC    0x200000        /* 8 descriptors, 16 bytes each */
#define AVAIL   0x201000
#define USED    0x202000
#define HDR     0x203000        /* struct virtio_blk_outhdr */
#define DATA    0x204000        /* one sector */
#define STATUS  0x205000
#define QSIZE   8

_start:
    lea stack_top(%rip), %rsp
    lea s_start(%rip), %rsi
    call puts64
    mov $MMIO, %ebx

    cmpl $0x74726976, 0x00(%rbx)    /* "virt" */
    jne no_device
    cmpl $2, 0x04(%rbx)             /* version 2 */
    jne no_device
    cmpl $2, 0x08(%rbx)             /* block */
    jne no_device

    movl $0, 0x70(%rbx)             /* reset */
    movl $1, 0x70(%rbx)             /* ACKNOWLEDGE */
    movl $3, 0x70(%rbx)             /* DRIVER */
    movl $1, 0x14(%rbx)             /* DeviceFeaturesSel = 1 */
    testl $1, 0x10(%rbx)            /* VIRTIO_F_VERSION_1 offered? */
    jz no_device
    movl $1, 0x24(%rbx)
    movl $1, 0x20(%rbx)             /* accept VERSION_1 */
    movl $0, 0x24(%rbx)
    movl $0x200, 0x20(%rbx)         /* accept VIRTIO_BLK_F_FLUSH */
    movl $0xb, 0x70(%rbx)           /* FEATURES_OK */
    testl $8, 0x70(%rbx)
    jz no_device

    movl $0, 0x30(%rbx)             /* QueueSel 0 */
    cmpl $QSIZE, 0x34(%rbx)         /* QueueNumMax >= 8 */
    jb no_device
    movl $QSIZE, 0x38(%rbx)
    movl $DESC, 0x80(%rbx)
    movl $0, 0x84(%rbx)
    movl $AVAIL, 0x90(%rbx)
    movl $0, 0x94(%rbx)
    movl $USED, 0xa0(%rbx)
    movl $0, 0xa4(%rbx)
    movl $1, 0x44(%rbx)             /* QueueReady */
    movl $0xf, 0x70(%rbx)           /* DRIVER_OK */
    testl $0x40, 0x70(%rbx)
    jnz no_device

    /* capacity (config space, 8 bytes at +0x100) */
    lea s_capacity(%rip), %rsi
    call puts64
    movzbl 0x100(%rbx), %eax
    call puthex8
    mov $'\n', %al
    call putc64

    /* read sector 0 */
    xor %eax, %eax                  /* VIRTIO_BLK_T_IN */
    xor %edx, %edx
    mov $DATA, %edi
    mov $512, %ecx
    mov $2, %r8d                    /* device-writable */
    call request
    lea s_read(%rip), %rsi
    call puts64
    call putstatus
    lea s_sector0(%rip), %rsi
    call puts64
    mov $DATA, %esi
    mov $16, %ecx
    call putn64
    mov $'\n', %al
    call putc64

#ifndef HOSTILE
    /* write the pattern to sector 1 */
    mov $DATA, %edi
    xor %ecx, %ecx
1:  mov %cl, %al
    xor $0x5a, %al
    mov %al, (%rdi,%rcx)
    inc %ecx
    cmp $512, %ecx
    jb 1b
    mov $1, %eax                    /* VIRTIO_BLK_T_OUT */
    mov $1, %edx
    mov $DATA, %edi
    mov $512, %ecx
    xor %r8d, %r8d                  /* device-readable */
    call request
    lea s_write(%rip), %rsi
    call puts64
    call putstatus

    /* flush: header and status only */
    mov $4, %eax
    xor %edx, %edx
    xor %ecx, %ecx
    call request
    lea s_flush(%rip), %rsi
    call puts64
    call putstatus
#else
    /* a data buffer far outside guest RAM */
    xor %eax, %eax
    xor %edx, %edx
    mov $0xfff000000000, %rdi
    mov $512, %ecx
    mov $2, %r8d
    call request
    lea s_oob(%rip), %rsi
    call puts64
    call putstatus

    /* a sector beyond any disk (and sector + 1 overflows) */
    xor %eax, %eax
    mov $-1, %rdx
    mov $DATA, %edi
    mov $512, %ecx
    mov $2, %r8d
    call request
    lea s_beyond(%rip), %rsi
    call puts64
    call putstatus

    /* descriptor 0 chained to itself */
    mov $DESC, %edi
    movq $HDR, 0(%rdi)
    movl $16, 8(%rdi)
    movw $1, 12(%rdi)               /* NEXT */
    movw $0, 14(%rdi)               /* ... to descriptor 0 */
    call post
    mov $0x10000000, %ecx
2:  testl $0x40, 0x70(%rbx)         /* DEVICE_NEEDS_RESET */
    jnz 3f
    pause
    loop 2b
    lea s_loop_missing(%rip), %rsi
    call puts64
    jmp 4f
3:  lea s_loop_ok(%rip), %rsi
    call puts64
4:
#endif
    movl $0, 0x70(%rbx)             /* reset the device */
    cmpl $0, 0x70(%rbx)
    jne 5f
    lea s_done(%rip), %rsi
    call puts64
5:  jmp finish64

no_device:
    lea s_no_device(%rip), %rsi
    call puts64
    jmp finish64

/* request: one virtio-blk request, waited for. %eax type, %rdx sector,
 * %rdi data buffer, %ecx its length (0: no data descriptor), %r8w the data
 * descriptor's flags (2: device-writable). Leaves the status byte at STATUS.
 * Clobbers rax, rcx, rdx, rsi, rdi. */
request:
    movl %eax, HDR
    movl $0, HDR + 4
    movq %rdx, HDR + 8
    movb $0xff, STATUS
    mov $DESC, %esi
    movq $HDR, 0(%rsi)              /* descriptor 0: header */
    movl $16, 8(%rsi)
    movw $1, 12(%rsi)               /* NEXT */
    movw $1, 14(%rsi)               /* header -> data (or status) */
    test %ecx, %ecx
    jz 1f
    movq %rdi, 16(%rsi)             /* descriptor 1: data */
    movl %ecx, 24(%rsi)
    mov %r8w, %ax
    or $1, %ax
    movw %ax, 28(%rsi)
    movw $2, 30(%rsi)               /* data -> status */
    mov $32, %eax
    jmp 2f
1:  mov $16, %eax                   /* header -> status */
2:  add %rax, %rsi
    movq $STATUS, 0(%rsi)
    movl $1, 8(%rsi)
    movw $2, 12(%rsi)               /* device-writable, last */
    movw $0, 14(%rsi)
    call post
    /* wait until the used index catches up with ours */
    mov $0x10000000, %ecx
3:  movzwl USED + 2, %eax
    cmp avail_idx(%rip), %ax
    je 4f
    pause
    loop 3b
    lea s_timeout(%rip), %rsi
    call puts64
4:  ret

/* post: head 0 into the avail ring, bump its index, notify queue 0.
 * Clobbers rax, rdx. */
post:
    movzwl avail_idx(%rip), %eax
    mov %eax, %edx
    and $(QSIZE - 1), %edx
    movw $0, AVAIL + 4(,%rdx,2)
    inc %eax
    mov %ax, avail_idx(%rip)
    mfence
    movw %ax, AVAIL + 2
    mfence
    movl $0, 0x50(%rbx)             /* QueueNotify */
    ret

/* putstatus: prints "status=<hex>\n" for the byte at STATUS. */
putstatus:
    lea s_status(%rip), %rsi
    call puts64
    movzbl STATUS, %eax
    call puthex8
    mov $'\n', %al
    call putc64
    ret

/* puthex8: prints %al as two hex digits. Clobbers rax, rcx, rdx. */
puthex8:
    mov %eax, %ecx
    shr $4, %al
    call 1f
    mov %ecx, %eax
1:  and $0xf, %al
    add $'0', %al
    cmp $'9', %al
    jbe 2f
    add $('a' - '9' - 1), %al
2:  jmp putc64

    .include "lib64.inc"
s_start:        .asciz "vmpod-guest: blk start\n"
s_no_device:    .asciz "vmpod-guest: blk no usable device\n"
s_capacity:     .asciz "vmpod-guest: blk capacity="
s_read:         .asciz "vmpod-guest: blk read "
s_sector0:      .asciz "vmpod-guest: blk sector0="
s_write:        .asciz "vmpod-guest: blk write "
s_flush:        .asciz "vmpod-guest: blk flush "
s_oob:          .asciz "vmpod-guest: blk oob "
s_beyond:       .asciz "vmpod-guest: blk beyond "
s_loop_ok:      .asciz "vmpod-guest: blk loop needs-reset ok\n"
s_loop_missing: .asciz "vmpod-guest: blk loop needs-reset MISSING\n"
s_timeout:      .asciz "vmpod-guest: blk request timed out\n"
s_status:       .asciz "status="
s_done:         .asciz "vmpod-guest: blk done\n"

    .section .data
avail_idx: .word 0

    .section .bss
    .balign 16
    .skip 4096
stack_top:
