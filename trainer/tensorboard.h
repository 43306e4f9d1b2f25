// TensorBoard event files written directly (no TensorFlow): a TFRecord stream of Event
// protocol buffers, each scalar an Event{wall_time, step, Summary{Value{tag, simple_value}}}.
// TFRecord framing: uint64 length, uint32 masked CRC-32C of the length, the bytes, uint32
// masked CRC-32C of the bytes (little endian). The first record holds file_version
// "brain.Event:2". `tensorboard --logdir RUN_DIR/tensorboard` reads them.
#pragma once
#include <cstdint>
#include <cstdio>
#include <string>

namespace anvil {

// TFRecord's masked CRC-32C (core/checksum.h).
uint32_t masked_crc32c(const void* data, size_t n);

// The protobuf bytes of one scalar Event (exposed for tests).
std::string scalar_event_bytes(double wall_time, int64_t step, const std::string& tag, float value);
// One TFRecord frame around `payload`.
std::string tfrecord_frame(const std::string& payload);

class TensorBoardWriter {
 public:
  // Creates DIR (if needed) and DIR/events.out.tfevents.<seconds>.<host>.<pid>.
  explicit TensorBoardWriter(const std::string& dir);
  ~TensorBoardWriter();
  TensorBoardWriter(const TensorBoardWriter&) = delete;
  TensorBoardWriter& operator=(const TensorBoardWriter&) = delete;

  void scalar(const std::string& tag, int64_t step, double value);
  void flush();
  const std::string& path() const { return path_; }

 private:
  void write_record(const std::string& payload);
  std::string path_;
  std::FILE* file_ = nullptr;
};

}  // namespace anvil
