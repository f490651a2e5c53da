//! A read-only 4-D strided view of a `flex` tensor's storage, shared by the CPU kernels
//! ([`crate::attention`], [`crate::conv`]).

use burn::tensor::DType;
use burn_flex::FlexTensor;

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
