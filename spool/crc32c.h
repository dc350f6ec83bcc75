/* SPDX-License-Identifier: MIT */
#ifndef DS_SPOOL_CRC32C_H
#define DS_SPOOL_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/*
 * CRC32C (Castagnoli, reflected polynomial 0x82F63B78), as used by iSCSI,
 * ext4 and btrfs. crc32c(0, "123456789", 9) == 0xE3069283. Incremental:
 * crc32c(crc32c(0, a, n), b, m) == crc32c(0, a||b, n + m).
 * Uses SSE4.2 when the CPU has it (checked once at start-up), else
 * slicing-by-8 tables.
 */
uint32_t crc32c(uint32_t crc, const void *buf, size_t len);
uint32_t crc32c_sw(uint32_t crc, const void *buf, size_t len);
/* True if the hardware path is in use. */
int crc32c_hw_available(void);

#endif
