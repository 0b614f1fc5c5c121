// Page-cache control for the host tier: how much of a file is in RAM (mincore), and asking the
// kernel to drop or read ahead file pages (madvise / posix_fadvise).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace moe {

struct Residency {
  uint64_t file_bytes;
  uint64_t resident_bytes;
  uint64_t page_size;
};

// Returns false (and sets err) when the file cannot be opened or mapped.
bool file_residency(const std::string& path, Residency* out, std::string* err);

// Drops the file's cached pages: unmaps `map_len` bytes at `map_addr` (another mapping of the same
// file, e.g. LMDB's; 0 to skip) with MADV_DONTNEED so they are no longer in use, then
// POSIX_FADV_DONTNEED over the file. Clean pages only; the data stays on disk.
bool drop_file_cache(const std::string& path, uint64_t map_addr, uint64_t map_len, std::string* err);

// Starts reading [offset, offset+len) of the file into the page cache in the background.
bool will_need(const std::string& path, uint64_t offset, uint64_t len, std::string* err);

}  // namespace moe
