// Python bindings of optimlab's fused CPU kernels (module built by optimlab/kernels/cpu.py).
#include <torch/python.h>  // lighter than torch/extension.h: the type casters, not the C++ API
#include <pybind11/functional.h>  // Adafactor's callback (it takes the GIL to run)
#include <torch/csrc/DynamicTypes.h>  // torch::getTHPDtype

#include "kernels.h"

// Python list (or tuple) of tensors -> optimlab::TensorList, borrowing the tensors: the caster
// keeps a tuple of the items for the call (a list the caller changes meanwhile changes nothing)
// and points at each item's at::Tensor; no reference count is taken per tensor. (pybind's
// std::vector<at::Tensor> costs ~0.15 us per tensor and list on a step of small tensors.)
namespace pybind11::detail {
template <>
struct type_caster<optimlab::TensorList> {
  PYBIND11_TYPE_CASTER(optimlab::TensorList, const_name("list[torch.Tensor]"));

  bool load(handle src, bool /*convert*/) {
    if (PyTuple_Check(src.ptr())) {
      items_ = reinterpret_borrow<object>(src);
    } else if (PyList_Check(src.ptr())) {
      items_ = reinterpret_steal<object>(PyList_AsTuple(src.ptr()));
      if (!items_) throw error_already_set();
    } else {
      return false;
    }
    const Py_ssize_t n = PyTuple_GET_SIZE(items_.ptr());
    value.reserve(static_cast<size_t>(n));
    PyTypeObject* checked = nullptr;  // the last type that passed the check (lists hold one type)
    for (Py_ssize_t i = 0; i < n; ++i) {
      PyObject* item = PyTuple_GET_ITEM(items_.ptr(), i);
      if (Py_TYPE(item) != checked) {
        if (!THPVariable_Check(item)) return false;
        checked = Py_TYPE(item);
      }
      value.push_back(&THPVariable_Unpack(item));
    }
    return true;
  }

  static handle cast(const optimlab::TensorList& src, return_value_policy, handle) {
    list out(src.size());
    for (size_t i = 0; i < src.size(); ++i) {
      out[i] = reinterpret_steal<object>(THPVariable_Wrap(src[i]));
    }
    return out.release();
  }

 private:
  object items_;
};
}  // namespace pybind11::detail

namespace optimlab {
namespace {

template <class F>
void for_each_scalar(const TensorList& scalars, const F& f) {
  for (size_t i = 0; i < scalars.size(); ++i) {
    prefetch_ahead(scalars, i);
    const at::Tensor& t = scalars[i];
    TORCH_CHECK(t.numel() == 1, "expected 1-element tensors");
    f(t);
  }
}

}  // namespace

std::vector<double> add_to_scalars(const TensorList& scalars, double delta) {
  std::vector<double> out;
  out.reserve(scalars.size());
  for_each_scalar(scalars, [&](const at::Tensor& t) {
    if (t.device().is_cpu() && t.scalar_type() == at::kFloat) {
      float* p = t.data_ptr<float>();
      *p += static_cast<float>(delta);  // what `t += delta` computes
      out.push_back(*p);
      t.unsafeGetTensorImpl()->bump_version();
    } else if (t.device().is_cpu() && t.scalar_type() == at::kDouble) {
      double* p = t.data_ptr<double>();
      *p += delta;
      out.push_back(*p);
      t.unsafeGetTensorImpl()->bump_version();
    } else {
      const_cast<at::Tensor&>(t).add_(delta);
      out.push_back(t.item().toDouble());
    }
  });
  return out;
}

std::vector<double> read_scalars(const TensorList& scalars) {
  std::vector<double> out;
  out.reserve(scalars.size());
  for_each_scalar(scalars, [&](const at::Tensor& t) {
    if (t.device().is_cpu() && t.scalar_type() == at::kFloat) {
      out.push_back(*t.data_ptr<float>());
    } else if (t.device().is_cpu() && t.scalar_type() == at::kDouble) {
      out.push_back(*t.data_ptr<double>());
    } else {
      out.push_back(t.item().toDouble());
    }
  });
  return out;
}

void write_scalars(const TensorList& scalars, const std::vector<double>& values) {
  TORCH_CHECK(scalars.size() == values.size() || values.size() == 1,
              "write_scalars: one value per tensor, or one for all");
  const PerTensor value(values);
  for (size_t i = 0; i < scalars.size(); ++i) {
    prefetch_ahead(scalars, i);
    const at::Tensor& t = scalars[i];
    TORCH_CHECK(t.numel() == 1, "expected 1-element tensors");
    if (t.device().is_cpu() && t.scalar_type() == at::kFloat) {
      *t.data_ptr<float>() = static_cast<float>(value[i]);
      t.unsafeGetTensorImpl()->bump_version();
    } else if (t.device().is_cpu() && t.scalar_type() == at::kDouble) {
      *t.data_ptr<double>() = value[i];
      t.unsafeGetTensorImpl()->bump_version();
    } else {
      const_cast<at::Tensor&>(t).fill_(value[i]);
    }
  }
}

// The optimizer's per-step state lookup (optimlab/optimizer.py, Optimizer._gather) in one pass:
// for each param, its state dict in `state` (the optimizer's defaultdict), then each of `keys`
// in it. Returns one list per key (each param's entry, None where absent), or None when a param
// has no state yet or something is unusual (the caller's Python path handles those).
//
// Why in C++: `state.get(p)` calls torch.Tensor.__hash__, a Python function returning id(p),
// for every param: the lookup here passes that hash to the dict directly (when the param's type
// has torch.Tensor's __hash__), which is most of the cost of the step's host work it replaces.
py::object state_columns(const py::dict& state, const py::list& params, const py::tuple& keys) {
  static PyObject* tensor_hash = nullptr;  // torch.Tensor.__hash__ (the function object)
  static PyObject* hash_name = nullptr;
  if (tensor_hash == nullptr) {
    hash_name = PyUnicode_InternFromString("__hash__");
    tensor_hash = py::module_::import("torch").attr("Tensor").attr("__dict__")["__hash__"].ptr();
    Py_INCREF(tensor_hash);  // (kept for the process: the torch module never goes away)
  }
  const Py_ssize_t n = PyList_GET_SIZE(params.ptr()), n_keys = PyTuple_GET_SIZE(keys.ptr());
  std::vector<py::list> columns;
  columns.reserve(static_cast<size_t>(n_keys));
  for (Py_ssize_t k = 0; k < n_keys; ++k) columns.emplace_back(n);
  PyTypeObject* id_hashed = nullptr;  // the last param type whose __hash__ is torch.Tensor's
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* p = PyList_GET_ITEM(params.ptr(), i);
    PyObject* entry;
    if (Py_TYPE(p) == id_hashed || _PyType_Lookup(Py_TYPE(p), hash_name) == tensor_hash) {
      id_hashed = Py_TYPE(p);
      // torch.Tensor.__hash__ returns id(p), which CPython turns into this Py_hash_t
      entry = _PyDict_GetItem_KnownHash(state.ptr(), p, static_cast<Py_hash_t>(reinterpret_cast<intptr_t>(p)));
    } else {
      entry = PyDict_GetItemWithError(state.ptr(), p);
    }
    if (entry == nullptr) {
      if (PyErr_Occurred()) throw py::error_already_set();
      return py::none();  // no state yet
    }
    if (!PyDict_CheckExact(entry) || PyDict_GET_SIZE(entry) == 0) return py::none();
    for (Py_ssize_t k = 0; k < n_keys; ++k) {
      PyObject* value = PyDict_GetItemWithError(entry, PyTuple_GET_ITEM(keys.ptr(), k));
      if (value == nullptr && PyErr_Occurred()) throw py::error_already_set();
      value = value == nullptr ? Py_None : value;
      Py_INCREF(value);
      PyList_SET_ITEM(columns[k].ptr(), i, value);
    }
  }
  py::list out(n_keys);
  for (Py_ssize_t k = 0; k < n_keys; ++k) out[k] = std::move(columns[k]);
  return std::move(out);
}

// The optimizer's per-step read of its params (optimlab/optimizer.py, Optimizer._plan) in one
// pass over the tensors' C++ objects: `(params with a grad, their grads, frozenset of the params'
// dtypes, whether any grad is sparse)`, or None when a param is not exactly a torch.Tensor or
// torch.nn.Parameter (a subclass may compute `.grad` in Python: the caller's Python path reads it).
py::object plan_scan(const py::list& candidates) {
  static PyObject* tensor_type = nullptr;
  static PyObject* parameter_type = nullptr;
  if (tensor_type == nullptr) {
    tensor_type = py::object(py::module_::import("torch").attr("Tensor")).release().ptr();
    parameter_type = py::object(py::module_::import("torch.nn").attr("Parameter")).release().ptr();
  }
  const Py_ssize_t n = PyList_GET_SIZE(candidates.ptr());
  py::list params, grads;
  std::array<bool, static_cast<size_t>(at::ScalarType::NumOptions)> seen{};
  bool any_sparse = false;
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* p = PyList_GET_ITEM(candidates.ptr(), i);
    PyObject* type = reinterpret_cast<PyObject*>(Py_TYPE(p));
    if (type != tensor_type && type != parameter_type) return py::none();
    const at::Tensor& t = THPVariable_Unpack(p);
    const at::Tensor& g = t.grad();
    if (!g.defined()) continue;
    params.append(p);
    grads.append(py::reinterpret_steal<py::object>(THPVariable_Wrap(g)));
    seen[static_cast<size_t>(t.scalar_type())] = true;
    any_sparse = any_sparse || g.is_sparse();
  }
  py::set dtypes;
  for (size_t st = 0; st < seen.size(); ++st) {
    if (seen[st]) dtypes.add(py::handle(reinterpret_cast<PyObject*>(torch::getTHPDtype(static_cast<at::ScalarType>(st)))));
  }
  return py::make_tuple(params, grads, py::reinterpret_steal<py::object>(PyFrozenSet_New(dtypes.ptr())),
                        any_sparse);
}

}  // namespace optimlab

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace py = pybind11;
  using namespace optimlab;
  m.doc() = "optimlab fused CPU optimizer kernels";
#ifdef CPU_CAPABILITY_AVX512
  m.attr("capability") = "AVX512";
#elif defined(CPU_CAPABILITY_AVX2)
  m.attr("capability") = "AVX2";
#else
  m.attr("capability") = "DEFAULT";
#endif
  m.attr("vector_width_float") = static_cast<int>(at::vec::Vectorized<float>::size());
  m.def("adam", &adam, py::call_guard<py::gil_scoped_release>());
  m.def("sgd", &sgd, py::call_guard<py::gil_scoped_release>());
  m.def("adagrad", &adagrad, py::call_guard<py::gil_scoped_release>());
  m.def("adadelta", &adadelta, py::call_guard<py::gil_scoped_release>());
  m.def("adamax", &adamax, py::call_guard<py::gil_scoped_release>());
  m.def("asgd", &asgd, py::call_guard<py::gil_scoped_release>());
  m.def("nadam", &nadam, py::call_guard<py::gil_scoped_release>());
  m.def("radam", &radam, py::call_guard<py::gil_scoped_release>());
  m.def("rmsprop", &rmsprop, py::call_guard<py::gil_scoped_release>());
  m.def("rprop", &rprop, py::call_guard<py::gil_scoped_release>());
  m.def("adafactor", &adafactor, py::call_guard<py::gil_scoped_release>());
  m.def("lp_write", &lp_write, py::call_guard<py::gil_scoped_release>());
  m.def("add_to_scalars", &add_to_scalars);
  m.def("read_scalars", &read_scalars);
  m.def("write_scalars", &write_scalars);
  m.def("state_columns", &state_columns);
  m.def("plan_scan", &plan_scan);
}
