// Moving a model to a device and compute dtype, for the GPU tests and bench/gpu_train_throughput.
// TODO(merge): branch `model` (b9e3d6c) adds this to the model API as TransformerLM::to(Device,
// DType): params, grads and the RoPE tables moved, f32 masters kept beside bf16 values. Once it is
// merged, replace move_model(m, d, t) by m.to(d, t) and delete this header. Until then the
// detection below keeps the callers compiling, and they fail with a message that says so instead
// of running on the wrong device.
#pragma once
#include <type_traits>
#include <utility>

#include "core/device.h"
#include "core/dtype.h"
#include "core/error.h"

namespace anvil::testing {

template <class M, class = void>
struct CanMoveToDevice : std::false_type {};
template <class M>
struct CanMoveToDevice<M, std::void_t<decltype(std::declval<M&>().to(Device::cuda(0), DType::BF16))>>
    : std::true_type {};

template <class M>
void move_model(M& model, Device device, DType compute) {
  if constexpr (CanMoveToDevice<M>::value) {
    model.to(device, compute);
  } else {
    ANVIL_FAIL("the model has no to(Device, DType) yet: merge the model branch (mixed precision) and replace "
               "move_model in tests/support/model_device.h by that call");
  }
}

}  // namespace anvil::testing
