//! All-or-nothing building, for `up` and `container add`: each completed
//! step registers its undo, and unless the whole build is committed, the undos
//! run in reverse order when the guard drops, on an early `?` return and on
//! panic alike. Undos are blocking (no runtime needed, since they run from
//! `Drop`), tolerate the thing being gone already, and log what they cannot
//! undo rather than fail: there is already an error on its way to the user.

/// Undoes the completed steps of a failed build when dropped, unless committed.
#[must_use = "dropping a Rollback undoes every step at once"]
#[derive(Default)]
pub struct Rollback<'a> {
    undos: Vec<Box<dyn FnOnce() + 'a>>,
}

impl<'a> Rollback<'a> {
    /// Registers the undo of a step that just completed.
    pub fn push(&mut self, undo: impl FnOnce() + 'a) {
        self.undos.push(Box::new(undo));
    }

    /// The build is complete: drops the undos without running them.
    pub fn commit(mut self) {
        self.undos.clear();
    }
}

impl Drop for Rollback<'_> {
    fn drop(&mut self) {
        while let Some(undo) = self.undos.pop() {
            undo();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    #[test]
    fn undoes_in_reverse_unless_committed() {
        let log = RefCell::new(Vec::new());
        {
            let mut rollback = Rollback::default();
            rollback.push(|| log.borrow_mut().push(1));
            rollback.push(|| log.borrow_mut().push(2));
        }
        assert_eq!(*log.borrow(), [2, 1]);
        let mut rollback = Rollback::default();
        rollback.push(|| log.borrow_mut().push(3));
        rollback.commit();
        assert_eq!(*log.borrow(), [2, 1]);
    }
}
