// CRC-32C (Castagnoli), the checksum of TFRecord files and of checkpoint tensors.
#pragma once
#include <cstddef>
#include <cstdint>

namespace anvil {

// Continues `crc` (0 to start) over n bytes.
uint32_t crc32c(const void* data, size_t n, uint32_t crc = 0);

}  // namespace anvil
