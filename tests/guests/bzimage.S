# (c) bzImage-style guest: a flat file with a Linux boot protocol 2.15 setup
# header (one setup sector) and a "protected-mode kernel" that the loader puts
# at code32_start (1 MiB). XLF_KERNEL_64 says it has a 64-bit entry point at
# load address + 0x200, which is where the VMM starts it, %rsi -> zero page.
    .code64
    .section .text, "ax"
    .org 0x1f1
    .byte 1                     # setup_sects: 1 sector after the boot sector
    .word 0                     # root_flags
    .long (payload_end - payload) / 16  # syssize
    .word 0, 0, 0               # ram_size, vid_mode, root_dev
    .word 0xAA55                # boot_flag
    .org 0x200
    .byte 0xeb, 0x66            # jump (real-mode entry, unused)
    .ascii "HdrS"               # header
    .word 0x020f                # version 2.15
    .long 0                     # realmode_swtch
    .word 0, 0                  # start_sys_seg, kernel_version
    .byte 0                     # type_of_loader (the loader fills it)
    .byte 0x01                  # loadflags: LOADED_HIGH
    .word 0                     # setup_move_size
    .long 0x100000              # code32_start
    .long 0, 0, 0               # ramdisk_image, ramdisk_size, bootsect_kludge
    .word 0                     # heap_end_ptr
    .byte 0, 0                  # ext_loader_ver, ext_loader_type
    .long 0                     # cmd_line_ptr
    .long 0x37ffffff            # initrd_addr_max
    .long 0x200000              # kernel_alignment
    .byte 0, 0                  # relocatable_kernel, min_alignment
    .word 0x0001                # xloadflags: XLF_KERNEL_64
    .long 2047                  # cmdline_size
    .org 0x258
    .quad 0x100000              # pref_address
    .long 0x10000               # init_size
    .org 0x400
payload:
    .org 0x600                  # payload + 0x200: the 64-bit entry
entry64:
    mov %rsi, %rbx
    lea stack_top(%rip), %rsp
    lea s_hello(%rip), %rsi
    call puts64
    call zero_page64
    jmp finish64

    .include "lib64.inc"
s_hello: .asciz "vmpod-guest: bzimage ok"
    .balign 16
    .skip 2048
stack_top:
payload_end:
