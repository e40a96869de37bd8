// Ctrl-C inside a long native call (decoder_ar_greedy_search runs a whole search in one call, with
// the GIL released by the dispatcher): interrupt_requested() takes the GIL, runs Python's pending
// signal handlers and, where one raised (KeyboardInterrupt by default), clears that exception and
// marks SIGINT pending again, so that Python raises it as soon as the call returns. The call then
// stops early; its partial outputs never reach Python code.
#include "cpu/decoder_passes.h"

#include <Python.h>

namespace janus_fast {
namespace cpu {

bool interrupt_requested() {
  if (!Py_IsInitialized()) return false;
  const PyGILState_STATE state = PyGILState_Ensure();
  const bool raised = PyErr_CheckSignals() != 0;  // runs handlers in the main thread only
  if (raised) {
    PyErr_Clear();
    PyErr_SetInterrupt();  // raised again by the interpreter once the op has returned
  }
  PyGILState_Release(state);
  return raised;
}

}  // namespace cpu
}  // namespace janus_fast
