"""Reads a run's TensorBoard event files with TensorBoard's own reader (the `tensorboard`
package, no TensorFlow) and prints every scalar as JSON: {tag: [[step, value], ...]}.
The reader verifies each record's masked CRC-32C, so a framing or checksum error fails here."""
import json
import sys

from tensorboard.backend.event_processing import io_wrapper
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.compat.tensorflow_stub import errors, pywrap_tensorflow


def main(logdir):
    files = [f for f in io_wrapper.ListDirectoryAbsolute(logdir) if io_wrapper.IsTensorFlowEventsFile(f)]
    if not files:
        sys.exit(f"no event files in {logdir}")
    # Every record through TensorBoard's record reader, whose CRC checks raise DataLossError
    # (the accumulator below would treat a bad record as a truncated file and stop quietly).
    for path in files:
        reader = pywrap_tensorflow.PyRecordReader_New(path)
        try:
            while True:
                reader.GetNext()
        except errors.OutOfRangeError:
            pass
        except errors.DataLossError as e:
            sys.exit(f"{path}: {e}")
    acc = EventAccumulator(logdir, size_guidance={"scalars": 0})
    acc.Reload()
    out = {tag: [[e.step, e.value] for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
