import socket, subprocess, sys, threading, ssl, os
out = sys.argv[1]
def serve(sock, name, results):
    c, _ = sock.accept()
    data = b''
    c.settimeout(3)
    try:
        while True:
            if len(data) >= 9:
                # first record's handshake length decides; join records
                pos=0; hs=b''
                while pos+5 <= len(data):
                    ln = int.from_bytes(data[pos+3:pos+5],'big')
                    hs += data[pos+5:pos+5+ln]; pos += 5+ln
                if len(hs)>=4 and len(hs) >= 4+int.from_bytes(hs[1:4],'big'):
                    break
            b = c.recv(65536)
            if not b: break
            data += b
    except Exception as e:
        print('err', e)
    results[name] = data
    c.close()

def run(name, cmd):
    s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(1)
    port = s.getsockname()[1]
    res = {}
    t = threading.Thread(target=serve, args=(s, name, res)); t.start()
    if callable(cmd):
        try: cmd(port)
        except Exception: pass
    else:
        subprocess.run([a.replace('PORT', str(port)) for a in cmd], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10)
    t.join()
    open(os.path.join(out, name + '.hex'), 'w').write(res[name].hex() + '\n')
    print(name, len(res[name]))

def py(host, alpn, maxv=None):
    def f(port):
        ctx = ssl.create_default_context()
        ctx.check_hostname=False; ctx.verify_mode=ssl.CERT_NONE
        if alpn: ctx.set_alpn_protocols(alpn)
        if maxv: ctx.maximum_version = maxv
        s = socket.create_connection(('127.0.0.1', port), timeout=2)
        try: ctx.wrap_socket(s, server_hostname=host)
        except Exception: pass
    return f

run('openssl-sclient-sni-alpn', ['openssl','s_client','-connect','127.0.0.1:PORT','-servername','www.Example.com','-alpn','h2,http/1.1'])
run('openssl-sclient-nosni', ['openssl','s_client','-connect','127.0.0.1:PORT','-noservername'])
run('openssl-sclient-tls12', ['openssl','s_client','-connect','127.0.0.1:PORT','-servername','legacy.example.org','-tls1_2'])
run('openssl-sclient-ffdhe8192', ['openssl','s_client','-connect','127.0.0.1:PORT','-servername','big.example.net','-groups','ffdhe8192:x25519'])
run('curl-h2', ['curl','-sk','--max-time','2','--http2','--resolve','blocked.example.com:PORT:127.0.0.1','https://blocked.example.com:PORT/'])
run('curl-h11', ['curl','-sk','--max-time','2','--http1.1','--resolve','api.example.com:PORT:127.0.0.1','https://api.example.com:PORT/'])
run('curl-ip-literal', ['curl','-sk','--max-time','2','https://127.0.0.1:PORT/'])
run('python-ssl-h2', py('python.example.com', ['h2','http/1.1']))
run('python-ssl-tls12', py('old.example.com', None, ssl.TLSVersion.TLSv1_2))
