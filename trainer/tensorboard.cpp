#include "trainer/tensorboard.h"

#include <unistd.h>

#include <array>
#include <chrono>
#include <cstring>
#include <filesystem>

#include "core/checksum.h"
#include "core/error.h"

namespace anvil {

namespace {

void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7F) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}

template <class T>
void put_le(std::string& out, T v) {
  char bytes[sizeof(T)];
  std::memcpy(bytes, &v, sizeof(T));  // x86 and arm64 are little endian, as the formats are
  out.append(bytes, sizeof(T));
}

// Protobuf field keys: (field number << 3) | wire type (0 varint, 1 fixed64, 2 bytes, 5 fixed32).
void put_key(std::string& out, int field, int wire) { put_varint(out, static_cast<uint64_t>(field << 3 | wire)); }

void put_bytes(std::string& out, int field, const std::string& bytes) {
  put_key(out, field, 2);
  put_varint(out, bytes.size());
  out += bytes;
}

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace

uint32_t masked_crc32c(const void* data, size_t n) {
  const uint32_t c = crc32c(data, n);
  return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

std::string scalar_event_bytes(double wall_time, int64_t step, const std::string& tag, float value) {
  std::string v;  // Summary.Value: tag = 1, simple_value = 2
  put_bytes(v, 1, tag);
  put_key(v, 2, 5);
  put_le(v, value);
  std::string summary;  // Summary: repeated Value value = 1
  put_bytes(summary, 1, v);
  std::string event;  // Event: wall_time = 1, step = 2, summary = 5
  put_key(event, 1, 1);
  put_le(event, wall_time);
  put_key(event, 2, 0);
  put_varint(event, static_cast<uint64_t>(step));
  put_bytes(event, 5, summary);
  return event;
}

std::string tfrecord_frame(const std::string& payload) {
  std::string out;
  const uint64_t length = payload.size();
  put_le(out, length);
  put_le(out, masked_crc32c(out.data(), sizeof length));
  out += payload;
  put_le(out, masked_crc32c(payload.data(), payload.size()));
  return out;
}

TensorBoardWriter::TensorBoardWriter(const std::string& dir) {
  std::filesystem::create_directories(dir);
  char host[128] = {0};
  gethostname(host, sizeof host - 1);
  path_ = dir + "/events.out.tfevents." + std::to_string(static_cast<int64_t>(now_seconds())) + "." + host + "." +
          std::to_string(getpid());
  file_ = std::fopen(path_.c_str(), "wb");
  ANVIL_CHECK(file_ != nullptr, "cannot create the TensorBoard event file ", path_,
              " — check write permission in run.out_dir, or set logging.tensorboard: false");
  std::string first;  // Event{wall_time, file_version = 3}
  put_key(first, 1, 1);
  put_le(first, now_seconds());
  put_bytes(first, 3, "brain.Event:2");
  write_record(first);
  flush();
}

TensorBoardWriter::~TensorBoardWriter() {
  if (file_) std::fclose(file_);
}

void TensorBoardWriter::write_record(const std::string& payload) {
  const std::string frame = tfrecord_frame(payload);
  std::fwrite(frame.data(), 1, frame.size(), file_);
}

void TensorBoardWriter::scalar(const std::string& tag, int64_t step, double value) {
  write_record(scalar_event_bytes(now_seconds(), step, tag, static_cast<float>(value)));
}

void TensorBoardWriter::flush() { std::fflush(file_); }

}  // namespace anvil
