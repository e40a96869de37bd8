// A signal inside a long native call (decoder_ar_greedy_search runs a whole search in one call, with
// the GIL released by the dispatcher): interrupt_requested() takes the GIL and runs Python's pending
// signal handlers. Where one raised (KeyboardInterrupt for Ctrl-C, the CLI's SystemExit for SIGTERM, a
// deadline's own exception), that exception is handed to janus_fast.native.interrupts.stash and the
// call stops early; its Python caller raises the stashed exception as soon as the call returns
// (interrupts.raise_pending), so partial outputs never reach Python code. Should the stash fail, SIGINT
// is marked pending instead (KeyboardInterrupt once the call returns).
#include "cpu/decoder_passes.h"

#include <Python.h>

namespace janus_fast {
namespace cpu {

namespace {

// Hands the raised exception (the error indicator, set) to Python; false where that failed.
bool stash_raised_exception() {
  PyObject *type = nullptr, *value = nullptr, *traceback = nullptr;
  PyErr_Fetch(&type, &value, &traceback);
  PyErr_NormalizeException(&type, &value, &traceback);
  if (value != nullptr && traceback != nullptr) PyException_SetTraceback(value, traceback);
  bool stashed = false;
  PyObject* module = PyImport_ImportModule("janus_fast.native.interrupts");
  if (module != nullptr && value != nullptr) {
    PyObject* result = PyObject_CallMethod(module, "stash", "O", value);
    stashed = result != nullptr;
    Py_XDECREF(result);
  }
  Py_XDECREF(module);
  PyErr_Clear();  // whatever the stash raised: the fallback below says the call was stopped
  Py_XDECREF(type);
  Py_XDECREF(value);
  Py_XDECREF(traceback);
  return stashed;
}

}  // namespace

bool interrupt_requested() {
  if (!Py_IsInitialized()) return false;
  const PyGILState_STATE state = PyGILState_Ensure();
  const bool raised = PyErr_CheckSignals() != 0;  // runs handlers in the main thread only
  if (raised && !stash_raised_exception()) {
    PyErr_SetInterrupt();  // raised by the interpreter once the op has returned (if SIGINT is handled)
  }
  PyGILState_Release(state);
  return raised;
}

}  // namespace cpu
}  // namespace janus_fast
