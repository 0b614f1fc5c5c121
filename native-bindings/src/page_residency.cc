#include "page_residency.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

namespace moe {

static std::string errno_text(const char* what, const std::string& path) {
  return std::string(what) + " " + path + ": " + std::strerror(errno);
}

bool file_residency(const std::string& path, Residency* out, std::string* err) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return *err = errno_text("open", path), false;
  struct stat st;
  if (fstat(fd, &st) != 0) {
    *err = errno_text("stat", path);
    close(fd);
    return false;
  }
  const uint64_t page = uint64_t(sysconf(_SC_PAGESIZE));
  out->file_bytes = uint64_t(st.st_size);
  out->page_size = page;
  out->resident_bytes = 0;
  if (st.st_size == 0) return close(fd), true;
  void* map = mmap(nullptr, size_t(st.st_size), PROT_READ, MAP_SHARED, fd, 0);
  close(fd);
  if (map == MAP_FAILED) return *err = errno_text("mmap", path), false;
  const size_t pages = (size_t(st.st_size) + page - 1) / page;
  std::vector<unsigned char> vec(pages);
  // For a file mapping, mincore reports page-cache residency even for pages this mapping never touched.
  if (mincore(map, size_t(st.st_size), vec.data()) != 0) {
    *err = errno_text("mincore", path);
    munmap(map, size_t(st.st_size));
    return false;
  }
  for (size_t i = 0; i < pages; i++) out->resident_bytes += (vec[i] & 1) ? page : 0;
  munmap(map, size_t(st.st_size));
  return true;
}

bool will_need(const std::string& path, uint64_t offset, uint64_t len, std::string* err) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return *err = errno_text("open", path), false;
  int rc = posix_fadvise(fd, off_t(offset), off_t(len), POSIX_FADV_WILLNEED);
  close(fd);
  if (rc != 0) return *err = "posix_fadvise(WILLNEED) " + path + ": " + std::strerror(rc), false;
  return true;
}

}  // namespace moe
