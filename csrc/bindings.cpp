// Python bindings of optimlab's fused CPU kernels (module built by optimlab/kernels/cpu.py).
#include <torch/python.h>  // lighter than torch/extension.h: the type casters, not the C++ API
#include <pybind11/functional.h>  // Adafactor's callback (it takes the GIL to run)

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
}
