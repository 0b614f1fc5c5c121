// Page-cache measurement (how much of a file is in RAM: mincore; the tests check with it that expert
// reads leave no second copy there) and read-ahead hints (posix_fadvise WILLNEED).
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

// Starts reading [offset, offset+len) of the file into the page cache in the background.
bool will_need(const std::string& path, uint64_t offset, uint64_t len, std::string* err);

}  // namespace moe
