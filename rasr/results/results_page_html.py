"""The one template of the results page (report/index.html) and its script; rasr/results/results_page.py fills it.

The page shows the summary at once and the rows 50 at a time: data/page-NNNNN.js files call
RASR.page(n, [row HTML, ...]) and are loaded as <script> elements (a page opened from a folder may load
scripts, not fetch files). Pages hold one run's rows each, in the order the runs were added (RASR_META.runs:
first row, rows, first page); the page shows the run RASR_META.first (the latest) first and marks its rows new,
then the other runs newest first, and an input enhanced again only in its newest row. Filters and sorts read
data/keys-NNNNN.js (status, category, similarity, time and path of 10,000 rows each), loaded on their first
use, then load only the pages of the rows they show.

Test hook: index.html#selftest moves the first slider, applies filters and writes what it saw into
<pre id="selftest"> (read by a headless browser's DOM dump); `#selftest&sim=0.5` also checks the
similarity filter with that minimum, sorted by similarity.
"""

PAGE_CSS = """
header{display:flex;align-items:baseline;gap:14px;flex-wrap:wrap}
.cards{display:flex;gap:18px;flex-wrap:wrap;align-items:flex-start}.cards>div{min-width:260px}
details summary{cursor:pointer;color:var(--acc);font-size:13px}
#filters{position:sticky;top:0;z-index:5;background:#fff;display:flex;flex-wrap:wrap;gap:10px;align-items:center;
 padding:8px 0;border-bottom:1px solid var(--line);font-size:13px}
#filters label{display:inline-flex;gap:4px;align-items:center}#filters input[type=number]{width:64px}
#count{color:var(--mut);margin-left:auto}
.row{display:flex;gap:14px;padding:10px 0;border-bottom:1px solid var(--line);align-items:flex-start}
.row .pv{flex:0 0 auto;display:flex;align-items:flex-start}
.row .info{flex:1 1 auto;min-width:0;font-size:13px}.row .p{font-weight:600;word-break:break-all;margin-bottom:4px}
.badge{display:inline-block;font-size:11px;font-weight:600;padding:0 6px;border-radius:8px;margin-left:6px;
 vertical-align:1px}
.badge.ok{background:#e6f4ea;color:var(--good)}.badge.error{background:#fdecea;color:var(--bad)}
.badge.skipped{background:#eceff3;color:var(--mut)}.badge.new{background:#e8f0fe;color:var(--acc)}
.row:not(.isnew) .badge.new{display:none}
.err{color:var(--bad);font-weight:600;margin:4px 0}
.refs{display:flex;gap:8px;flex-wrap:wrap;margin:4px 0}.refs figure{width:84px;font-size:11px}
.refs img{width:84px;height:64px;object-fit:cover;background:#e9ecf1;display:block}
.refs .unused img{opacity:.45}
figure.transfer{margin:4px 0;font-size:11px}figure.transfer img{max-width:100%;display:block}
.kv td{padding:1px 8px 1px 0;border:0;font-size:12px;vertical-align:top}.kv td:first-child{color:var(--mut)}
.nopv{width:240px;height:60px;display:flex;align-items:center;justify-content:center;background:#f3f5f8;
 color:var(--mut);font-size:12px;text-align:center;padding:6px}
#more{margin:14px 0;padding:6px 18px}
"""

TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>{{title}}</title><style>{{css}}{{page_css}}</style></head><body>
<pre id="page-errors" hidden></pre>
<header><h1>{{title}}</h1><span class="mut">{{subtitle}}</span></header>
{{summary}}
{{failures}}
<h2 id="images">Images</h2>
<form id="filters" onsubmit="return false">
 <label>Status <select name="st"><option value="">all</option><option value="ok">ok</option>
  <option value="error">error</option><option value="skipped">skipped</option></select></label>
 <label>Category <select name="cat"><option value="">all</option>{{category_options}}</select></label>
 <label>Similarity <input name="lo" type="number" step="0.01" min="-1" max="1" placeholder="min"> to
  <input name="hi" type="number" step="0.01" min="-1" max="1" placeholder="max"></label>
 <label>Path <input name="q" type="search" placeholder="contains"></label>
 <label><input name="nw" type="checkbox"> latest run only</label>
 <label>Sort <select name="sort"><option value="">latest run first, then path</option>
  <option value="sim:desc">similarity, high first</option><option value="sim:asc">similarity, low first</option>
  <option value="ms:desc">time per image, slow first</option><option value="ms:asc">time per image, fast first</option>
  <option value="at:desc">processed, newest first</option><option value="at:asc">processed, oldest first</option>
 </select></label>
 <span id="count"></span>
</form>
<div id="rows"></div>
<button id="more" type="button" hidden>Show more</button>
<pre id="selftest" hidden></pre>
<script>{{viewer_js}}</script>
<script>var RASR_META={{meta}};</script>
<script>{{app_js}}</script>
{{first_page}}
</body></html>
"""

APP_JS = r"""
(function(){
  var M=RASR_META, rowsEl=document.getElementById('rows'), moreEl=document.getElementById('more');
  var countEl=document.getElementById('count'), form=document.getElementById('filters');
  var pages={}, waiting={}, keys=null, chunks={}, keyWaiting=[], order=null, shown=0, gen=0, busy=false, ready=[];
  var seen={}, rendered=0;
  // runs: [first row, rows, first page] in the order they were added; shown: M.first, then the others newest first
  var seq=[M.first];
  for(var r=M.runs.length-1;r>=0;r--){if(r!==M.first){seq.push(r);}}
  function pad(n){var s=String(n);while(s.length<5){s='0'+s;}return s;}
  function load(src){var s=document.createElement('script');s.src=src;document.head.appendChild(s);}
  function runOf(i){var lo=0,hi=M.runs.length-1;while(lo<hi){var m=(lo+hi+1)>>1;if(M.runs[m][0]<=i){lo=m;}else{hi=m-1;}}
    return lo;}
  function where(i){var r=M.runs[runOf(i)], off=i-r[0];return [r[2]+Math.floor(off/M.pageSize),off%M.pageSize];}
  function isNew(i){var r=M.runs[M.first];return !!r&&i>=r[0]&&i<r[0]+r[1];}
  function defaultAt(k){
    for(var s=0;s<seq.length;s++){var r=M.runs[seq[s]];if(k<r[1]){return r[0]+k;}k-=r[1];}
    return -1;
  }
  function needPages(list,done){
    var left=list.filter(function(n){return !pages[n];}).length;
    if(!left){done();return;}
    list.forEach(function(n){
      if(pages[n]){return;}
      if(!waiting[n]){waiting[n]=[];load('data/page-'+pad(n)+'.js');}
      waiting[n].push(function(){if(--left===0){done();}});
    });
  }
  function needKeys(done){
    if(keys){done();return;}
    keyWaiting.push(done);
    if(keyWaiting.length===1){for(var c=0;c<M.keyChunks;c++){load('data/keys-'+pad(c)+'.js');}}
  }
  window.RASR={
    page:function(n,rows){
      pages[n]=rows;var w=waiting[n]||[];delete waiting[n];w.forEach(function(f){f();});
      if(shown===0&&order===null&&!busy&&M.runs.length&&n===M.runs[M.first][2]){showMore();}
    },
    keys:function(c,k){
      chunks[c]=k;
      for(var i=0;i<M.keyChunks;i++){if(!chunks[i]){return;}}
      var all={};
      Object.keys(k).forEach(function(name){all[name]=[];
        for(var i=0;i<M.keyChunks;i++){all[name]=all[name].concat(chunks[i][name]);}});
      keys=all;var w=keyWaiting;keyWaiting=[];w.forEach(function(f){f();});
    },
    onReady:function(f){ready.push(f);}
  };
  function total(){return order?order.length:M.rows;}
  function pathOf(html){var m=/ data-p="([^"]*)"/.exec(html);return m?m[1]:'';}
  function showMore(){
    if(busy){return;}
    var g=gen, idx=[], to=Math.min(total(),shown+M.pageSize);
    for(var k=shown;k<to;k++){idx.push(order?order[k]:defaultAt(k));}
    var need=[];
    idx.forEach(function(i){var p=where(i)[0];if(need.indexOf(p)<0){need.push(p);}});
    busy=true;
    needPages(need,function(){
      if(g!==gen){return;}
      busy=false;
      var html=[];
      idx.forEach(function(i){
        var w=where(i), h=pages[w[0]][w[1]];
        if(!order){var p=pathOf(h);if(seen[p]){return;}seen[p]=1;}  // an input enhanced again: its newest row only
        if(isNew(i)){h=h.replace('<div class="row"','<div class="row isnew"');}
        html.push(h);
      });
      rowsEl.insertAdjacentHTML('beforeend',html.join(''));
      rendered+=html.length;shown=to;
      countEl.textContent=(order?order.length+' of ':'')+M.total+' images, '+rendered+' shown';
      moreEl.hidden=shown>=total();
      var r=ready;ready=[];r.forEach(function(f){f();});
    });
  }
  function filtering(){
    var f=form.elements;
    return f.st.value||f.cat.value||f.lo.value||f.hi.value||f.q.value.trim()||f.nw.checked||f.sort.value;
  }
  function compute(){
    var f=form.elements, st=f.st.value, cat=f.cat.value, lo=parseFloat(f.lo.value), hi=parseFloat(f.hi.value);
    var q=f.q.value.trim().toLowerCase(), out=[], rank={}, dup={}, pos=0;
    for(var s=0;s<seq.length;s++){
      var run=M.runs[seq[s]];
      for(var i=run[0];i<run[0]+run[1];i++){
        var path=keys.path[i];
        if(dup[path]){continue;}  // shown order is newest first: a later row of the same input came before
        dup[path]=1;rank[i]=pos++;
        var v=keys.sim[i];
        if(st&&keys.st[i]!==st){continue;}
        if(cat!==''&&keys.cat[i]!==+cat){continue;}
        if(!isNaN(lo)&&!(v!==null&&v>=lo)){continue;}
        if(!isNaN(hi)&&!(v!==null&&v<=hi)){continue;}
        if(q&&path.toLowerCase().indexOf(q)<0){continue;}
        if(f.nw.checked&&!isNew(i)){continue;}
        out.push(i);
      }
    }
    if(f.sort.value){
      var p=f.sort.value.split(':'), col=keys[p[0]], dir=p[1]==='desc'?-1:1;
      out.sort(function(a,b){
        var x=col[a],y=col[b];
        if(x===null||y===null){return x===y?rank[a]-rank[b]:(x===null?1:-1);}
        return (x-y)*dir||rank[a]-rank[b];
      });
    }
    return out;
  }
  function apply(){
    var g=++gen;
    function render(){if(g!==gen){return;}rowsEl.innerHTML='';shown=0;rendered=0;seen={};busy=false;showMore();}
    if(!filtering()){order=null;render();return;}
    needKeys(function(){if(g===gen){order=compute();render();}});
  }
  var timer=null;
  function later(){clearTimeout(timer);timer=setTimeout(apply,120);}
  form.addEventListener('input',later);form.addEventListener('change',later);
  moreEl.addEventListener('click',showMore);
  window.addEventListener('scroll',function(){
    if(!moreEl.hidden&&!busy&&moreEl.getBoundingClientRect().top<window.innerHeight+600){showMore();}
  });
  if(location.hash.indexOf('#selftest')===0){window.addEventListener('load',selftest);}

  function selftest(){
    var res={}, out=document.getElementById('selftest'), f=form.elements;
    var sim=/[&;]sim=([0-9.+-]+)/.exec(location.hash);
    function rows(){return Array.prototype.map.call(rowsEl.querySelectorAll('.row'),function(r){
      return {path:r.getAttribute('data-p'),st:r.getAttribute('data-st'),sim:r.getAttribute('data-sim'),
              visible:r.offsetParent!==null,new:r.classList.contains('isnew')};});}
    function set(name,value,then){f[name].value=value;RASR.onReady(then);
      f[name].dispatchEvent(new Event('change',{bubbles:true}));}
    function finish(){
      res.errors=document.getElementById('page-errors').textContent;
      out.textContent=JSON.stringify(res);out.hidden=false;
    }
    function imagesOf(n){var list=[];Array.prototype.slice.call(rowsEl.querySelectorAll('.row'),0,n)
      .forEach(function(r){list=list.concat(Array.prototype.slice.call(r.querySelectorAll('img')));});return list;}
    function start(tries){
      var imgs=imagesOf(3);
      if(!rowsEl.firstChild||(!imgs.every(function(im){return im.complete;})&&tries<200)){
        setTimeout(function(){start(tries+1);},50);return;}
      var ba=rowsEl.querySelector('.ba'), b=ba&&ba.querySelector('.ba-b'), r=ba&&ba.getBoundingClientRect();
      res.images=imgs.length;
      res.images_loaded=imgs.filter(function(im){return im.naturalWidth>0;}).length;
      res.first_viewer=r&&{x:r.left+window.scrollX,y:r.top+window.scrollY,w:r.width,h:r.height,
        src:ba.querySelector('img').getAttribute('src'),row:ba.closest('.row').getAttribute('data-p')};
      res.initial=rows();
      if(b){
        var range=ba.closest('.vw').querySelector('.ba-r');
        res.slider={before:b.style.width,split_before:b.getBoundingClientRect().width};
        range.value=20;range.dispatchEvent(new Event('input',{bubbles:true}));
        res.slider.after=b.style.width;res.slider.split_after=b.getBoundingClientRect().width;
      }
      set('st','error',function(){
        res.status_error=rows();
        set('st','',function(){
          if(!sim){finish();return;}
          f.lo.value=sim[1];
          set('sort','sim:desc',function(){res.similarity=rows();finish();});
        });
      });
    }
    start(0);
  }
})();
"""
