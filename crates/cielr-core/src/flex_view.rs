//! What the CPU kernels ([`crate::attention`], [`crate::activation`], [`crate::conv`]) share:
//! reaching the `flex` backend's tensors from code generic over a backend, and a read-only
//! 4-D strided view of a `flex` tensor's storage.

use std::any::{Any, TypeId};

use burn::tensor::DType;
use burn_flex::FlexTensor;

/// Defines a kernel module's per-thread call counter: the public `cpu_kernel_calls()` (its doc
/// comment given by the caller; tests and diagnostics read it) and the private
/// `count_kernel_call()` each CPU-kernel call makes.
macro_rules! cpu_kernel_counter {
    ($(#[$doc:meta])*) => {
        thread_local! {
            static KERNEL_CALLS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
        }

        $(#[$doc])*
        pub fn cpu_kernel_calls() -> usize {
            KERNEL_CALLS.with(std::cell::Cell::get)
        }

        /// Counts one more call on this thread that ran the CPU kernel.
        fn count_kernel_call() {
            KERNEL_CALLS.with(|c| c.set(c.get() + 1));
        }
    };
}
pub(crate) use cpu_kernel_counter;

/// `value` as a `U` when `T` and `U` are the same type, `value` back otherwise. Code generic
/// over a backend `B` reaches the CPU backend's tensors with it once it knows that `B` is
/// `CpuBackend` (e.g. `Tensor<B, 4>` as `Tensor<CpuBackend, 4>`); it only re-types.
pub(crate) fn same_type<T: 'static, U: 'static>(value: T) -> Result<U, T> {
    if TypeId::of::<T>() != TypeId::of::<U>() {
        return Err(value);
    }
    let boxed: Box<dyn Any> = Box::new(value);
    match boxed.downcast::<U>() {
        Ok(u) => Ok(*u),
        Err(_) => unreachable!("a downcast between types with the same TypeId"),
    }
}

/// The way back after [`same_type`] succeeded: a kernel's CPU-backend result as the caller's
/// type, which is the same type.
pub(crate) fn same_type_back<T: 'static, U: 'static>(value: T) -> U {
    match same_type(value) {
        Ok(u) => u,
        Err(_) => unreachable!("same_type_back on types that same_type did not match"),
    }
}

/// A read-only 4-D strided view of a flex tensor's storage (strides in elements, all ≥ 0;
/// a broadcast dimension has stride 0).
#[derive(Clone, Copy)]
pub(crate) struct View<'a, T> {
    pub(crate) data: &'a [T],
    pub(crate) offset: usize,
    /// The (broadcast) shape the view is read as.
    pub(crate) shape: [usize; 4],
    pub(crate) strides: [usize; 4],
}

impl<'a, T> View<'a, T> {
    /// Views `data` with `layout`, broadcast to `target`; `None` when a dimension is
    /// neither the target size nor 1, a stride is negative or an element lies outside
    /// `data`.
    pub(crate) fn new(data: &'a [T], t: &FlexTensor, target: [usize; 4]) -> Option<Self> {
        let layout = t.layout();
        let shape = layout.shape();
        if shape.num_dims() != 4 || layout.strides().len() != 4 {
            return None;
        }
        let mut strides = [0usize; 4];
        let mut last = layout.start_offset();
        for i in 0..4 {
            let stride = usize::try_from(layout.strides()[i]).ok()?;
            if shape[i] == target[i] {
                strides[i] = if shape[i] == 1 { 0 } else { stride };
            } else if shape[i] == 1 {
                strides[i] = 0;
            } else {
                return None;
            }
            last = last.checked_add(stride.checked_mul(shape[i].checked_sub(1)?)?)?;
        }
        (last < data.len()).then_some(Self {
            data,
            offset: layout.start_offset(),
            shape: target,
            strides,
        })
    }

    /// Element offset of `[b, h, i, j]`.
    #[inline]
    pub(crate) fn at(&self, b: usize, h: usize, i: usize, j: usize) -> usize {
        self.offset
            + b * self.strides[0]
            + h * self.strides[1]
            + i * self.strides[2]
            + j * self.strides[3]
    }
}

impl<'a> View<'a, f32> {
    /// `t` as it is (no broadcast) when it is a 4-D `f32` tensor with non-negative strides
    /// inside its storage.
    pub(crate) fn of_f32(t: &'a FlexTensor) -> Option<Self> {
        let shape = t.layout().shape();
        if t.dtype() != DType::F32 || shape.num_dims() != 4 {
            return None;
        }
        Self::new(
            t.storage::<f32>(),
            t,
            [shape[0], shape[1], shape[2], shape[3]],
        )
    }
}

/// A raw output pointer shared by parallel work items that each write their own, disjoint
/// part of one buffer (the kernels' rayon loops). Every user states, at its `unsafe` write,
/// which part its item owns.
#[derive(Clone, Copy)]
pub(crate) struct SharedOut(pub(crate) *mut f32);
// SAFETY: the pointer is only written through by work items that write disjoint elements
// (each use site argues this at its `unsafe` block).
unsafe impl Send for SharedOut {}
// SAFETY: as above.
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// The pointer (a method, so closures capture the `Sync` wrapper, not the raw field).
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}
