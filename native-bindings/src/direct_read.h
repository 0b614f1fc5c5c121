// Reads byte ranges of a file with large aligned preads, several in flight, without leaving the
// data in the page cache: O_DIRECT where the filesystem allows it, else buffered reads followed by
// POSIX_FADV_DONTNEED on the range. Expert records are read this way instead of through LMDB's
// memory map, whose 4 KiB page faults cost ~15x what the disk can do (design.md, disk figures).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace moe {

// Direct-I/O alignment of offsets, lengths and buffers (the logical block size is at most this).
constexpr uint64_t kDirectAlign = 4096;
// One pread's size: the disk reaches its ceiling with 1 MiB reads (design.md, fio figures).
constexpr uint64_t kChunkBytes = 1 << 20;

struct OpenedFile {
  int fd = -1;
  bool direct = false;  // opened with O_DIRECT
  uint64_t size = 0;    // bytes, at open
};

// Opens read-only, with O_DIRECT when the filesystem supports it (tmpfs does not), and drops
// the file's pages from the page cache.
bool open_for_reads(const std::string& path, OpenedFile* out, std::string* err);

// A buffer holding [offset, offset+length) of the file: `base` is aligned to kDirectAlign and
// covers the aligned range; the data starts at base + lead. Free with free_range().
struct ReadRange {
  uint8_t* base = nullptr;
  uint64_t lead = 0;      // bytes before the requested offset
  uint64_t capacity = 0;  // bytes allocated at base
};

// Reads [offset, offset+length) with `parallel` threads each issuing kChunkBytes preads. A short
// read (the file ends early) or an I/O error fails with a message; nothing is left allocated then.
bool read_range(const OpenedFile& f, uint64_t offset, uint64_t length, int parallel, ReadRange* out, std::string* err);

void free_range(ReadRange* r);

// Page-aligned memory for records (mmap; free_block unmaps it).
uint8_t* alloc_block(uint64_t capacity);
void free_block(uint8_t* base, uint64_t capacity);

}  // namespace moe
