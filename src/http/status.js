// The status page's script: keeps the figures live by swapping in the
// server-rendered parts of the page (`/?part=...`), searches keys as one
// types, runs balance and purge after a confirmation, and uploads a file.
'use strict';
(function () {
  const $ = (id) => document.getElementById(id);
  const POLL_MS = 2000;
  let digest = null;

  async function part(name, query) {
    const response = await fetch('/?part=' + name + (query || ''), { cache: 'no-store' });
    if (!response.ok) throw new Error(name + ': HTTP ' + response.status);
    return response.text();
  }

  async function refresh() {
    try {
      const [members, work] = await Promise.all([part('members'), part('work')]);
      $('members').innerHTML = members;
      $('work').innerHTML = work;
      const summary = $('members').querySelector('[data-digest]');
      const now = summary && summary.dataset.digest;
      if (now && now !== digest) {
        if (digest !== null) $('ring').innerHTML = await part('ring');
        digest = now;
      }
      $('live').textContent = 'live · ' + new Date().toLocaleTimeString();
      $('live').classList.remove('stale');
    } catch (err) {
      $('live').textContent = 'cannot reach this node (' + err.message + ')';
      $('live').classList.add('stale');
    }
  }

  let searching = 0;
  async function search() {
    const mine = ++searching;
    const prefix = $('prefix').value;
    try {
      const html = await part('keys', '&prefix=' + encodeURIComponent(prefix));
      if (mine === searching) $('keys').innerHTML = html;
    } catch (err) {
      $('live').textContent = 'search failed (' + err.message + ')';
    }
  }

  function show(id, text, failed) {
    const out = $(id);
    out.hidden = false;
    out.textContent = text;
    out.classList.toggle('error', !!failed);
  }

  async function act(button) {
    if (!window.confirm(button.dataset.confirm)) return;
    button.disabled = true;
    show('action-result', button.textContent + '…');
    try {
      const response = await fetch(button.dataset.action, { method: 'POST' });
      const body = await response.text();
      let text = body;
      try { text = JSON.stringify(JSON.parse(body), null, 2); } catch (_) { /* not JSON */ }
      show('action-result', button.textContent + ' (HTTP ' + response.status + ')\n' + text, !response.ok);
    } catch (err) {
      show('action-result', button.textContent + ' failed: ' + err.message, true);
    } finally {
      button.disabled = false;
      refresh();
    }
  }

  async function upload(event) {
    event.preventDefault();
    const file = $('upload-file').files[0];
    if (!file) return;
    const key = $('upload-key').value || file.name;
    const path = key.split('/').map(encodeURIComponent).join('/');
    show('upload-result', 'uploading ' + key + ' (' + file.size + ' bytes)…');
    try {
      const headers = file.type ? { 'Content-Type': file.type } : {};
      const response = await fetch('/keys/' + path, { method: 'PUT', body: file, headers: headers });
      const body = await response.text();
      show('upload-result', response.ok ? 'stored ' + key + '\n' + body : 'HTTP ' + response.status + '\n' + body, !response.ok);
      if (response.ok) search();
    } catch (err) {
      show('upload-result', 'upload failed: ' + err.message, true);
    }
  }

  document.addEventListener('DOMContentLoaded', () => {
    const summary = $('members').querySelector('[data-digest]');
    digest = summary ? summary.dataset.digest : null;
    $('search').addEventListener('submit', (event) => { event.preventDefault(); search(); });
    $('prefix').addEventListener('input', search);
    for (const button of document.querySelectorAll('button[data-action]')) {
      button.addEventListener('click', () => act(button));
    }
    $('upload').addEventListener('submit', upload);
    setInterval(refresh, POLL_MS);
  });
})();
