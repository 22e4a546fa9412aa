// Read one handwritten digit on a microcontroller with TensorFlow Lite Micro and the files of
// `python rnn_mnist.py export --micro`: model_int8.cc and model_int8.h (docs/micro.md).
//
// Build it with TFLM's sources (github.com/tensorflow/tflite-micro) and model_int8.cc;
// ReadDigit takes the 28x28 picture as MNIST has it: white digit on black, row by row.

#include <cmath>
#include <cstdint>

#include "model_int8.h"
#include "tensorflow/lite/micro/micro_interpreter.h"
#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"
#include "tensorflow/lite/schema/schema_generated.h"

namespace {

// The arena the export measured, and a margin: a 32-bit build needs less, another
// version of TFLM may need more.
constexpr std::size_t kArenaSize = kModelInt8ArenaSize + 1024;
alignas(16) uint8_t tensor_arena[kArenaSize];

}  // namespace

// The digit in `pixels` (784 values, 0-255), or -1 when the model does not run.
int ReadDigit(const uint8_t pixels[28 * 28]) {
  static tflite::MicroMutableOpResolver<kModelInt8Operations> resolver;
  static const bool added = AddModelInt8Operations(resolver);
  static tflite::MicroInterpreter interpreter(tflite::GetModel(g_model_int8), resolver,
                                              tensor_arena, kArenaSize);
  static const bool allocated = added && interpreter.AllocateTensors() == kTfLiteOk;
  if (!allocated) return -1;

  int8_t* input = interpreter.input(0)->data.int8;
  for (int i = 0; i < 28 * 28; ++i) {
    input[i] = static_cast<int8_t>(std::lround(pixels[i] / 255.0f / kModelInt8InputScale) +
                                   kModelInt8InputZeroPoint);
  }
  if (interpreter.Invoke() != kTfLiteOk) return -1;

  const int8_t* scores = interpreter.output(0)->data.int8;
  int digit = 0;
  for (int d = 1; d < 10; ++d) {
    if (scores[d] > scores[digit]) digit = d;
  }
  interpreter.Reset();  // the LSTM's state back to zero: the next digit starts afresh
  return digit;
}
