// A confirmation dialog built on <dialog>: modal, labelled by its title,
// described by its text, Escape cancels, focus starts on "Cancel" and goes
// back to the button that opened it.

import { t } from './i18n.js';

export function confirmDialog({ title, body, confirmLabel, returnFocus }) {
  const dialog = document.getElementById('confirm-dialog');
  document.getElementById('confirm-title').textContent = title;
  document.getElementById('confirm-body').textContent = body;
  const ok = document.getElementById('confirm-ok');
  const cancel = document.getElementById('confirm-cancel');
  ok.textContent = confirmLabel || t('action.delete');
  cancel.textContent = t('action.cancel');
  dialog.returnValue = '';
  return new Promise((resolve) => {
    const onClose = () => {
      dialog.removeEventListener('close', onClose);
      dialog.removeEventListener('click', onBackdrop);
      resolve(dialog.returnValue === 'confirm');
      if (returnFocus && returnFocus.isConnected) returnFocus.focus();
    };
    // A click on the backdrop (outside the form) cancels.
    const onBackdrop = (e) => {
      if (e.target === dialog) dialog.close('cancel');
    };
    dialog.addEventListener('close', onClose);
    dialog.addEventListener('click', onBackdrop);
    dialog.showModal();
    cancel.focus();
  });
}
