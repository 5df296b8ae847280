// The status page's script: keeps the figures and charts live by swapping
// in the server-rendered parts of the page (`/?part=...`), searches keys as one
// types, runs balance and purge after a confirmation, and uploads a file.
// On a node with API tokens it first asks for one (the 401 page), keeps it
// in this tab's sessionStorage only, and sends it with every request.
'use strict';
(function () {
  const $ = (id) => document.getElementById(id);
  const POLL_MS = 2000;
  const TOKEN_KEY = 'ringkv-token';
  let digest = null;

  const token = () => sessionStorage.getItem(TOKEN_KEY);

  // fetch options with the tab's token, when it has one.
  function authed(options) {
    const out = Object.assign({}, options || {});
    const held = token();
    if (held) out.headers = Object.assign({}, out.headers || {}, { Authorization: 'Bearer ' + held });
    return out;
  }

  // The 401 page: loads the real page with the token and replaces this one.
  async function unlock() {
    try {
      const response = await fetch(location.href, authed({ cache: 'no-store' }));
      if (response.status === 401 || response.status === 403) {
        sessionStorage.removeItem(TOKEN_KEY);
        let why = await response.text();
        try { why = JSON.parse(why).error; } catch (_) { /* not JSON */ }
        show('token-result', 'refused: ' + why, true);
        return;
      }
      const html = await response.text();
      document.open();
      document.write(html);
      document.close();
    } catch (err) {
      show('token-result', 'cannot reach this node (' + err.message + ')', true);
    }
  }

  // Downloads carry the token too: fetched, then saved from a blob.
  async function download(event) {
    const link = event.target.closest && event.target.closest('a.download');
    if (!link || !token()) return;
    event.preventDefault();
    try {
      const response = await fetch(link.href, authed());
      if (!response.ok) throw new Error('HTTP ' + response.status);
      const url = URL.createObjectURL(await response.blob());
      const save = document.createElement('a');
      save.href = url;
      save.download = link.getAttribute('download') || decodeURIComponent(link.href.split('/').pop());
      document.body.appendChild(save);
      save.click();
      save.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60000);
    } catch (err) {
      $('live').textContent = 'download failed (' + err.message + ')';
    }
  }

  async function part(name, query) {
    const response = await fetch('/?part=' + name + (query || ''), authed({ cache: 'no-store' }));
    if (!response.ok) throw new Error(name + ': HTTP ' + response.status);
    return response.text();
  }

  async function refresh() {
    try {
      const [members, work, charts] = await Promise.all([part('members'), part('work'), part('charts')]);
      $('members').innerHTML = members;
      $('work').innerHTML = work;
      $('charts').innerHTML = charts;
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
      const response = await fetch(button.dataset.action, authed({ method: 'POST' }));
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
      const response = await fetch('/keys/' + path, authed({ method: 'PUT', body: file, headers: headers }));
      const body = await response.text();
      show('upload-result', response.ok ? 'stored ' + key + '\n' + body : 'HTTP ' + response.status + '\n' + body, !response.ok);
      if (response.ok) search();
    } catch (err) {
      show('upload-result', 'upload failed: ' + err.message, true);
    }
  }

  function start() {
    if (document.body.dataset.locked) {
      $('token-form').addEventListener('submit', (event) => {
        event.preventDefault();
        sessionStorage.setItem(TOKEN_KEY, $('token').value.trim());
        unlock();
      });
      if (token()) unlock();
      return;
    }
    if (token()) {
      const forget = document.createElement('button');
      forget.id = 'forget-token';
      forget.textContent = 'forget token';
      forget.addEventListener('click', () => { sessionStorage.removeItem(TOKEN_KEY); location.reload(); });
      document.querySelector('header').appendChild(forget);
      document.addEventListener('click', download);
    }
    const summary = $('members').querySelector('[data-digest]');
    digest = summary ? summary.dataset.digest : null;
    $('search').addEventListener('submit', (event) => { event.preventDefault(); search(); });
    $('prefix').addEventListener('input', search);
    for (const button of document.querySelectorAll('button[data-action]')) {
      button.addEventListener('click', () => act(button));
    }
    $('upload').addEventListener('submit', upload);
    setInterval(refresh, POLL_MS);
  }

  // The script ends the body: every element is there already, on a page
  // loaded as usual and on one written in by unlock() alike.
  start();
})();
